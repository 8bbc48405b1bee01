"""Errors that the CLI reports as one line and exit status 2."""


class PresetSuiteWarning(UserWarning):
    """A preset tuned for one benchmark suite was picked for an env of another."""


class UsageError(ValueError):
    """Bad user input: an unknown name, a value out of range, a run directory in the way.

    The message is one line that names the problem and, where there are few, the accepted values.
    """

"""Agents: one module per algorithm (its config, its pure ``init`` / ``act`` / ``update``
functions and its presets as data), on the shared pieces of :mod:`diffmaxent.agents.common`,
:mod:`diffmaxent.agents.groups` and :mod:`diffmaxent.agents.onpolicy`. The registry that names
them is :mod:`diffmaxent.registry`."""

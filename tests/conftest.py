import os

import pytest

# The suite runs on the CPU backend unless JAX_PLATFORMS says otherwise: one XLA thread pool shared
# by the 2 cores, no GPU probing noise in the logs, and float32 matrix products that are exact
# whatever `matmul_precision` says (a GPU's default is TF32).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No persistent compilation cache: with jaxlib 0.10.2 a long session that reads executables from
# it and writes new ones crashed (SIGSEGV in Executable.serialize, put_executable_and_time) at the
# same test every time, after 45 minutes of the suite; each test compiles what it runs.
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import jax  # after the environment it reads at import

# Tests that compare floats bit for bit (golden gradient steps, exact resume, seeds and their
# single runs, determinism): CPU-exact by design. On another backend they would compare TF32
# products and non-deterministic reductions, so they are skipped there rather than loosened.
CPU_EXACT_MODULES = {"test_behaviour", "test_contracts", "test_resume", "test_seeds"}


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "cpu":
        return
    skip = pytest.mark.skip(reason="compares floats bit for bit: exact on the CPU backend only")
    for item in items:
        if item.module.__name__ in CPU_EXACT_MODULES:
            item.add_marker(skip)

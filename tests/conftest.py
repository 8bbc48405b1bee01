import os
import shutil
import tempfile

import pytest

# The suite runs on the CPU backend unless JAX_PLATFORMS says otherwise: one XLA thread pool shared
# by the 2 cores, no GPU probing noise in the logs, and float32 matrix products that are exact
# whatever `matmul_precision` says (a GPU's default is TF32).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the session and the processes its tests start: tests
# build the same small agents again and again, and the resume tests restart training processes.
_CACHE = tempfile.mkdtemp(prefix="diffmaxent-test-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after the environment it reads at import)


@pytest.fixture(scope="session", autouse=True)
def _remove_compilation_cache():
    yield
    shutil.rmtree(_CACHE, ignore_errors=True)


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

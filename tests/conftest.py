import os
import shutil
import tempfile

import pytest

# One XLA thread pool shared by the 2 cores; no GPU probing noise in the logs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the session and the processes its tests start: tests
# build the same small agents again and again, and the resume tests restart training processes.
_CACHE = tempfile.mkdtemp(prefix="diffmaxent-test-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.fixture(scope="session", autouse=True)
def _remove_compilation_cache():
    yield
    shutil.rmtree(_CACHE, ignore_errors=True)

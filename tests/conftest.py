import gc
import os
from pathlib import Path

import pytest

# The suite runs on the CPU backend unless JAX_PLATFORMS says otherwise: one XLA thread pool shared
# by the 2 cores, no GPU probing noise in the logs, and float32 matrix products that are exact
# whatever `matmul_precision` says (a GPU's default is TF32).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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


# Every compiled XLA program kept alive holds memory mappings of its machine code (about a dozen
# for a small one), and jit keeps every program it compiled. The suite compiles thousands, and at
# the kernel's limit on mappings per process (vm.max_map_count, 65,530 by default) LLVM cannot
# map the next one and XLA crashes with SIGSEGV: it did, 41 minutes into the suite, at the same
# test each time (tests/test_meow.py; "LLVM compilation error: Cannot allocate memory" is hidden
# by TF_CPP_MIN_LOG_LEVEL). So between tests, once the process holds over half the limit, JAX's
# compiled programs are released (later tests compile again what they need).
_LIMIT_FILE = Path("/proc/sys/vm/max_map_count")
MAX_MAP_COUNT = int(_LIMIT_FILE.read_text()) if _LIMIT_FILE.exists() else None
RELEASES = []


def _memory_maps() -> int:
    with open("/proc/self/maps", "rb") as maps:
        return sum(1 for _ in maps)


@pytest.fixture(autouse=True)
def _release_compiled_programs_near_the_map_limit():
    yield
    if MAX_MAP_COUNT is None:
        return
    held = _memory_maps()
    if held > MAX_MAP_COUNT // 2:
        jax.clear_caches()
        gc.collect()
        RELEASES.append((held, _memory_maps()))


def pytest_terminal_summary(terminalreporter):
    for held, after in RELEASES:
        terminalreporter.write_line(
            f"released JAX's compiled programs: {held} memory maps held, {after} after"
        )

"""Behaviour pinned across refactors: every algorithm's metrics and parameters after 8 gradient
steps on a fixed batch stream, against ``tests/golden/gradient_steps.json``.

The comparison is to a relative 1e-4, not bitwise, so that it holds on any CPU (XLA's float
reductions differ between instruction sets); the bitwise check of a refactor on one machine is
``benchmarks/fingerprint.py`` (before and after, then ``--compare``). When a change of behaviour
is intended, regenerate the file with ``python tests/test_behaviour.py`` and say why in the
commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from diffmaxent.registry import ALGOS
from test_contracts import SMALL, UPDATES_PER_CALL, agent_and_batches

GOLDEN = Path(__file__).parent / "golden" / "gradient_steps.json"


def eight_gradient_steps(algo: str) -> dict[str, float]:
    """The metrics of the 4th of 4 updates (2 gradient steps each; on-policy agents: 4 updates
    of 2 epochs on one rollout) and the sum of |x| over every floating-point state leaf."""
    agent, source, _ = agent_and_batches(algo)
    state = agent.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    for i in range(4):
        batches = source.sample(rng, SMALL["batch_size"], UPDATES_PER_CALL)
        state, metrics = agent.update(state, batches, jax.random.PRNGKey(i))
    leaves = jax.tree_util.tree_leaves(state)
    total = sum(
        float(np.abs(np.asarray(x, np.float64)).sum()) for x in leaves if x.dtype.kind == "f"
    )
    return {**{k: float(v) for k, v in sorted(metrics.items())}, "state_abs_sum": total}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_eight_gradient_steps_match_the_golden_values(algo):
    golden = json.loads(GOLDEN.read_text())
    assert algo in golden, f"{algo} has no golden values: run `python tests/test_behaviour.py`"
    current = eight_gradient_steps(algo)
    assert sorted(current) == sorted(golden[algo])
    for name, expected in golden[algo].items():
        assert current[name] == pytest.approx(expected, rel=1e-4, abs=1e-6), name


if __name__ == "__main__":
    GOLDEN.write_text(
        json.dumps({algo: eight_gradient_steps(algo) for algo in sorted(ALGOS)}, indent=1) + "\n"
    )
    print(f"wrote {GOLDEN}", file=sys.stderr)

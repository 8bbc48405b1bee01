"""Learning through the suites' wrappers: a fixed seed must reach a stated return within a
CPU-sized budget (every agent's Pendulum-v1 test is in test_learning_pendulum.py)."""

from __future__ import annotations

import pytest

import diffmaxent
from diffmaxent import runs


@pytest.mark.learning
@pytest.mark.long_learning
def test_sac_balances_dmc_cartpole_with_action_repeat_8(tmp_path):
    """End to end through dm_control: the zero action scores about 740 and random actions about
    325 on cartpole-balance; SAC reached 998 at 5,000 agent steps (40,000 simulator steps)."""
    pytest.importorskip("dm_control")
    result = diffmaxent.train(
        "sac",
        "dmc:cartpole-balance",
        steps=6_000,
        seed=0,
        out=tmp_path / "sac_dmc",
        preset="cpu",
        overrides={"eval_every": 3_000, "eval_episodes": 5, "action_repeat": 8},
        progress=False,
    )
    returns = [row["eval_return_mean"] for row in runs.read_metrics(result.run_dir)]
    print("SAC dmc:cartpole-balance evaluation returns:", [round(r, 1) for r in returns])
    assert returns[-1] >= 900

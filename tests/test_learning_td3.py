"""TD3 learning test (cpu preset): Pendulum-v1 return."""

from __future__ import annotations

import pytest

import diffmaxent
from diffmaxent import runs


@pytest.mark.learning
def test_td3_reaches_minus_300_on_pendulum(tmp_path):
    result = diffmaxent.train(
        "td3",
        "Pendulum-v1",
        steps=8_000,
        seed=0,
        out=tmp_path / "pendulum",
        preset="cpu",
        overrides={"eval_every": 1_000, "eval_episodes": 10},
        progress=False,
    )
    returns = [row["eval_return_mean"] for row in runs.read_metrics(result.run_dir)]
    print("TD3 Pendulum-v1 evaluation returns:", [round(r, 1) for r in returns])
    assert max(returns) >= -300

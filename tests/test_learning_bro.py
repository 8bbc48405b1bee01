"""BRO learning test (cpu preset): Pendulum-v1 return."""

from __future__ import annotations

import pytest

import diffmaxent
from diffmaxent import runs


@pytest.mark.learning
@pytest.mark.long_learning
def test_bro_reaches_minus_300_on_pendulum(tmp_path):
    result = diffmaxent.train(
        "bro",
        "Pendulum-v1",
        steps=10_000,
        seed=0,
        out=tmp_path / "pendulum",
        preset="cpu",
        overrides={"eval_every": 1_000, "eval_episodes": 10},
        progress=False,
    )
    returns = [row["eval_return_mean"] for row in runs.read_metrics(result.run_dir)]
    print("BRO Pendulum-v1 evaluation returns:", [round(r, 1) for r in returns])
    assert max(returns) >= -300

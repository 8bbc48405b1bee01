"""MaxEntDP learning test beyond Pendulum (cpu preset): MultiGoal mode coverage."""

from __future__ import annotations

import pytest

import diffmaxent


@pytest.mark.learning
@pytest.mark.long_learning
def test_maxentdp_reaches_every_goal_on_multigoal(tmp_path):
    # Fig. 1 of the paper: every goal in at least 10% of 50 sampled episodes. One seed in CI;
    # docs/benchmarks.md records three.
    result = diffmaxent.train(
        "maxentdp",
        "MultiGoal-v0",
        steps=6_000,
        seed=0,
        out=tmp_path / "multigoal",
        preset="cpu",
        progress=False,
    )
    stats = result.summary["stochastic_episodes"]
    print("MaxEntDP MultiGoal-v0, 50 sampled episodes:", stats)
    counts = [stats[f"goal_{index}"] for index in range(4)]
    assert min(counts) >= 0.1 * stats["episodes"]
    assert stats["goal_episodes"] >= 40  # the policy heads for the goals rather than wandering
    assert (result.run_dir / "trajectories.png").exists()

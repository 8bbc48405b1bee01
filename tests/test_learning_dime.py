"""DIME learning tests beyond Pendulum (cpu preset): MultiGoal mode coverage and a known
Boltzmann optimum."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import diffmaxent

MULTIGOAL_STEPS = 6_000
BOLTZMANN_BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "dime_boltzmann.py"


def _boltzmann_benchmark():
    """benchmarks/dime_boltzmann.py as a module (its env registers itself on import)."""
    spec = importlib.util.spec_from_file_location("dime_boltzmann", BOLTZMANN_BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.learning
@pytest.mark.long_learning
def test_dime_keeps_every_goal_on_multigoal(tmp_path):
    # Fig. 1's criterion for one seed (the three-seed runs are in docs/benchmarks.md): every
    # goal is where at least 10% of 50 sampled episodes end.
    result = diffmaxent.train(
        "dime", "MultiGoal-v0", steps=MULTIGOAL_STEPS, seed=0, out=tmp_path / "mg", progress=False
    )
    summary = json.loads((result.run_dir / "summary.json").read_text())["stochastic_episodes"]
    print("DIME MultiGoal-v0 stochastic episodes:", summary)
    assert all(summary[f"goal_{goal}"] >= 5 for goal in range(4))


@pytest.mark.learning
def test_dime_recovers_the_boltzmann_optimum_of_a_one_step_mixture_task(tmp_path):
    # Reward log p(a) for four Gaussians at (+-0.5, +-0.5) with std 0.1: at alpha = 1 the
    # maximum-entropy policy is p itself (a quarter of the samples per mode, 95.6% within 0.25
    # of one). The criterion: every mode >= 15% of the samples, >= 70% near a mode.
    boltzmann = _boltzmann_benchmark()
    fit = boltzmann.train_and_fit({}, seed=0, out=tmp_path / "bandit")
    print("DIME on the mixture bandit:", {k: round(v, 3) for k, v in fit.items()})
    assert fit["min_share"] >= 0.15
    assert fit["near"] >= 0.70

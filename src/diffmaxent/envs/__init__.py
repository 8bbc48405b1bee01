"""Environments: :func:`make_env` for Gymnasium, DeepMind Control (``dmc:``) and MyoSuite
(``myo:``) ids, and the bundled ``MultiGoal-v0``."""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from diffmaxent.envs.factory import (
    EnvSpec,
    RescaledEnv,
    choose_offscreen_gl,
    env_spec,
    env_suite,
    make_env,
)
from diffmaxent.envs.multigoal import (
    MultiGoalEnv,
    goal_statistics,
    plot_trajectories,
)


@dataclasses.dataclass(frozen=True)
class EnvReport:
    """Extra evaluation output for an env: columns computed from each evaluation's last infos,
    and, at the end of training, ``plot_episodes`` stochastic episodes summarised in
    ``summary.json`` and drawn by ``plot`` (if any) into ``plot_file``."""

    summarize: Callable[[list[dict[str, Any]]], dict[str, float | None]]
    plot: Callable[[list[np.ndarray], str, str], None] | None = None
    plot_file: str = ""
    plot_episodes: int = 0


def success_rate(last_infos: list[dict[str, Any]]) -> dict[str, float | None]:
    """``success_rate``: the fraction of episodes whose last info says ``success`` (None, "not
    measured", without episodes)."""
    if not last_infos:
        return {"success_rate": None}
    return {"success_rate": float(np.mean([bool(i.get("success", False)) for i in last_infos]))}


ENV_REPORTS: dict[str, EnvReport] = {
    "MultiGoal-v0": EnvReport(goal_statistics, plot_trajectories, "trajectories.png", 50),
}
SUITE_REPORTS: dict[str, EnvReport] = {"myo": EnvReport(success_rate)}


def env_report(env_id: str) -> EnvReport | None:
    """The extra evaluation output of ``env_id``: by id (MultiGoal's goal coverage), else by suite
    (MyoSuite's success rate), else None."""
    return ENV_REPORTS.get(env_id) or SUITE_REPORTS.get(env_suite(env_id))


__all__ = [
    "ENV_REPORTS",
    "EnvReport",
    "EnvSpec",
    "MultiGoalEnv",
    "RescaledEnv",
    "choose_offscreen_gl",
    "env_report",
    "env_spec",
    "env_suite",
    "make_env",
    "success_rate",
]

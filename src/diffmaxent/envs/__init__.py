"""Environments: :func:`make_env` for Gymnasium, DeepMind Control (``dmc:``) and MyoSuite
(``myo:``) ids, the bundled ``MultiGoal-v0``, and the Gym MuJoCo tasks as the papers ran them
(:func:`paper_env_id`: ``paper/Ant-v3``)."""

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
    paper_env_id,
    paper_env_warning,
)
from diffmaxent.envs.multigoal import (
    GOAL_POSITIONS,
    MultiGoalEnv,
    goal_statistics,
    plot_trajectories,
)


@dataclasses.dataclass(frozen=True)
class EnvReport:
    """Extra evaluation output for an env: columns computed from each evaluation's last infos,
    and, at the end of training, ``plot_episodes`` stochastic episodes summarised in
    ``summary.json`` and drawn by ``plot`` (if any) into ``plot_file``; ``headline`` turns an
    evaluation's columns into the few words the progress line and the final line show."""

    summarize: Callable[[list[dict[str, Any]]], dict[str, float | None]]
    plot: Callable[[list[np.ndarray], str, str], None] | None = None
    plot_file: str = ""
    plot_episodes: int = 0
    headline: Callable[[dict[str, Any]], str] | None = None


def success_rate(last_infos: list[dict[str, Any]]) -> dict[str, float | None]:
    """``success_rate``: the fraction of episodes whose last info says ``success`` (None, "not
    measured", without episodes)."""
    if not last_infos:
        return {"success_rate": None}
    return {"success_rate": float(np.mean([bool(i.get("success", False)) for i in last_infos]))}


def _goals_headline(row: dict[str, Any]) -> str:
    return f"goals reached {row['goals_reached']:.0f} of {len(GOAL_POSITIONS)}"


def _success_headline(row: dict[str, Any]) -> str:
    rate = row.get("success_rate")
    return "success rate -" if rate is None else f"success rate {rate:.2f}"


ENV_REPORTS: dict[str, EnvReport] = {
    "MultiGoal-v0": EnvReport(
        goal_statistics, plot_trajectories, "trajectories.png", 50, _goals_headline
    ),
}
SUITE_REPORTS: dict[str, EnvReport] = {"myo": EnvReport(success_rate, headline=_success_headline)}


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
    "paper_env_id",
    "paper_env_warning",
    "success_rate",
]

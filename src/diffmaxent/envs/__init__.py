"""Environments: :func:`make_env` for any Gymnasium id, and the bundled ``MultiGoal-v0``."""

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from diffmaxent.envs.factory import EnvSpec, RescaledEnv, env_spec, make_env
from diffmaxent.envs.multigoal import (
    MAX_EPISODE_STEPS,
    MultiGoalEnv,
    goal_statistics,
    plot_trajectories,
)

if "MultiGoal-v0" not in gym.registry:
    gym.register(
        id="MultiGoal-v0",
        entry_point="diffmaxent.envs.multigoal:MultiGoalEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )


@dataclasses.dataclass(frozen=True)
class EnvReport:
    """Extra evaluation output for an env: columns computed from each evaluation's last infos,
    and a figure of ``plot_episodes`` stochastic episodes drawn at the end of training."""

    summarize: Callable[[list[dict[str, Any]]], dict[str, float]]
    plot: Callable[[list[np.ndarray], str, str], None]
    plot_file: str
    plot_episodes: int


ENV_REPORTS: dict[str, EnvReport] = {
    "MultiGoal-v0": EnvReport(goal_statistics, plot_trajectories, "trajectories.png", 50),
}

__all__ = [
    "ENV_REPORTS",
    "EnvReport",
    "EnvSpec",
    "MultiGoalEnv",
    "RescaledEnv",
    "env_spec",
    "make_env",
]

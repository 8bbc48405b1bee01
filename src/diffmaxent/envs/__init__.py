"""Environments: :func:`make_env` for any Gymnasium id, and the bundled ``MultiGoal-v0``."""

import gymnasium as gym

from diffmaxent.envs.factory import EnvSpec, RescaledEnv, env_spec, make_env
from diffmaxent.envs.multigoal import MAX_EPISODE_STEPS, MultiGoalEnv

if "MultiGoal-v0" not in gym.registry:
    gym.register(
        id="MultiGoal-v0",
        entry_point="diffmaxent.envs.multigoal:MultiGoalEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )

__all__ = ["EnvSpec", "MultiGoalEnv", "RescaledEnv", "env_spec", "make_env"]

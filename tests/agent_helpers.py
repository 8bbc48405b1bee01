"""Building small agents with a replay buffer of random Pendulum transitions, for tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffmaxent.api import resolve_config
from diffmaxent.buffer import ReplayBuffer
from diffmaxent.envs import make_env
from diffmaxent.registry import ALGOS


def tiny_agent(algo: str, overrides: dict[str, Any], env_id: str = "Pendulum-v1"):
    """``(agent, buffer, resolved_config)`` with 300 random transitions in the buffer."""
    config = resolve_config(algo, env_id, overrides=overrides)
    env = make_env(env_id, seed=0)
    agent = ALGOS[algo].make(config.agent, env.env_spec)
    buffer = ReplayBuffer(500, env.env_spec.obs_dim, env.env_spec.action_dim)
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(300):
        action = rng.uniform(-1, 1, env.env_spec.action_dim).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return agent, buffer, config

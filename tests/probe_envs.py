"""Tiny envs for tests, importable through Gymnasium's ``module:EnvName-v0`` form."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class ProbeEnv(gym.Env):
    """Obs: a Dict of the step count and a constant vector; action in [0, 4]; reward = action.

    Terminates when the (env-scale) action exceeds 3.9; the time limit truncates.
    """

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {
                "count": gym.spaces.Box(0.0, 100.0, shape=(1,), dtype=np.float64),
                "const": gym.spaces.Box(-1.0, 1.0, shape=(2, 1), dtype=np.float64),
            }
        )
        self.action_space = gym.spaces.Box(0.0, 4.0, shape=(1,), dtype=np.float32)
        self.count = 0
        self.last_action = None

    def _obs(self):
        return {"count": np.array([float(self.count)]), "const": np.array([[0.5], [-0.5]])}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return self._obs(), {}

    def step(self, action):
        self.last_action = np.asarray(action).copy()
        self.count += 1
        value = float(np.asarray(action).reshape(-1)[0])
        return self._obs(), value, value > 3.9, False, {}


class DiscreteEnv(gym.Env):
    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,))
        self.action_space = gym.spaces.Discrete(2)


gym.register("Probe-v0", entry_point=ProbeEnv, max_episode_steps=5)
gym.register("ProbeDiscrete-v0", entry_point=DiscreteEnv)

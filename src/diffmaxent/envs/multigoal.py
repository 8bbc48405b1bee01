"""The 2-D multi-goal point mass of Haarnoja et al. (2017), "Reinforcement Learning with Deep
Energy-Based Policies", used in the MaxEntDP paper's Fig. 1.

Constants are those of the original environment (softqlearning's ``MultiGoalEnv``):

* state: position in the box [-7, 7]^2, starting at N(0, 0.1^2 I) (clipped to the box);
* action: velocity in [-1, 1]^2; the next position is ``clip(position + action)`` (no dynamics
  noise);
* reward: ``-(30 * |action|^2 + 1 * min_g |position - g|^2)``, plus a bonus of 10 when the new
  position is within 1.0 of a goal;
* goals: (5, 0), (-5, 0), (0, 5), (0, -5);
* an episode terminates on reaching a goal and is truncated after 30 steps (the original's
  ``max_path_length``).

The maximum-entropy optimal policy picks one of the four goals at random and heads for it, which
makes the environment a direct test of whether a policy keeps several behaviour modes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

GOAL_POSITIONS = np.array([(5.0, 0.0), (-5.0, 0.0), (0.0, 5.0), (0.0, -5.0)], dtype=np.float32)
GOAL_THRESHOLD = 1.0
GOAL_REWARD = 10.0
ACTUATION_COST = 30.0
DISTANCE_COST = 1.0
INIT_SIGMA = 0.1
POSITION_LIMIT = 7.0
MAX_EPISODE_STEPS = 30


def distance_cost(position: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest goal; position ``[..., 2]`` -> ``[...]``."""
    diff = np.asarray(position)[..., None, :] - GOAL_POSITIONS
    return np.min(np.sum(diff**2, axis=-1), axis=-1)


def nearest_goal(position: np.ndarray) -> tuple[int, float]:
    """Index of the nearest goal and the Euclidean distance to it."""
    distances = np.linalg.norm(GOAL_POSITIONS - np.asarray(position, dtype=np.float32), axis=-1)
    index = int(np.argmin(distances))
    return index, float(distances[index])


class MultiGoalEnv(gym.Env):
    """2-D point mass with four goals; ``info["goal"]`` is the reached goal's index or -1."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(
            -POSITION_LIMIT, POSITION_LIMIT, shape=(2,), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        start = INIT_SIGMA * self.np_random.normal(size=2)
        self._position = np.clip(start, -POSITION_LIMIT, POSITION_LIMIT).astype(np.float32)
        return self._position.copy(), {"goal": -1}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        position = np.clip(self._position + action, -POSITION_LIMIT, POSITION_LIMIT)
        self._position = position.astype(np.float32)
        reward = -(
            ACTUATION_COST * float(np.sum(action**2))
            + DISTANCE_COST * float(distance_cost(self._position))
        )
        goal, distance = nearest_goal(self._position)
        terminated = distance < GOAL_THRESHOLD
        if terminated:
            reward += GOAL_REWARD
        return (
            self._position.copy(),
            reward,
            terminated,
            False,
            {"goal": goal if terminated else -1},
        )

"""The env facts an agent is built from (:class:`EnvSpec`): a module of its own below the env
factory and the suites it dispatches to, which all build one."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know about an env, saved with every run.

    ``action_low`` / ``action_high`` are the env's own bounds; agents act in [-1, 1].
    """

    env_id: str
    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """Map actions in [-1, 1] (shape ``[..., action_dim]``) to the env's bounds."""
        low = np.asarray(self.action_low, dtype=np.float32)
        high = np.asarray(self.action_high, dtype=np.float32)
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        return low + (action + 1.0) * 0.5 * (high - low)

    def from_env_action(self, env_action: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_env_action` (for actions inside the env's bounds)."""
        low = np.asarray(self.action_low, dtype=np.float32)
        high = np.asarray(self.action_high, dtype=np.float32)
        return 2.0 * (np.asarray(env_action, dtype=np.float32) - low) / (high - low) - 1.0

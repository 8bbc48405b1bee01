"""One way to make an environment: :func:`make_env` returns a Gymnasium env whose observations are
flat float32 vectors and whose actions live in [-1, 1]^|A|, with ``terminated`` and ``truncated``
kept apart so that agents bootstrap through time limits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from diffmaxent.errors import UsageError


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


class RescaledEnv(gym.Wrapper):
    """Flattens observations to float32 and rescales actions from [-1, 1] to the env's bounds.

    Actions outside [-1, 1] are clipped before rescaling. The first ``reset()`` without an explicit
    seed uses the seed given to :func:`make_env`, so two envs made with the same seed produce the
    same episodes.
    """

    def __init__(self, env: gym.Env, spec: EnvSpec, seed: int | None) -> None:
        super().__init__(env)
        self.env_spec = spec
        self._original_obs_space = env.observation_space
        low = gym.spaces.flatten_space(env.observation_space)
        self.observation_space = gym.spaces.Box(
            low=low.low.astype(np.float32),
            high=low.high.astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(spec.action_dim,), dtype=np.float32)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def _flat(self, obs: Any) -> np.ndarray:
        return np.asarray(
            gym.spaces.flatten(self._original_obs_space, obs), dtype=np.float32
        ).reshape(-1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return self._flat(obs), info

    def step(self, action: np.ndarray):
        env_action = self.env_spec.to_env_action(
            np.asarray(action).reshape(self.action_space.shape)
        )
        obs, reward, terminated, truncated, info = self.env.step(
            env_action.astype(self.env.action_space.dtype)
        )
        return self._flat(obs), float(reward), bool(terminated), bool(truncated), info


def env_spec(env_id: str, env: gym.Env) -> EnvSpec:
    """Check that `env` has a bounded continuous action space and describe it."""
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise UsageError(
            f"env {env_id!r} has a {type(space).__name__} action space; "
            "diffmaxent agents need a continuous Box action space"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise UsageError(f"env {env_id!r} has unbounded actions; diffmaxent needs finite bounds")
    obs_dim = int(gym.spaces.flatdim(env.observation_space))
    return EnvSpec(
        env_id=env_id,
        obs_dim=obs_dim,
        action_dim=int(np.prod(space.shape)),
        action_low=tuple(float(x) for x in np.asarray(space.low).reshape(-1)),
        action_high=tuple(float(x) for x in np.asarray(space.high).reshape(-1)),
    )


def make_env(env_id: str, seed: int | None = None, **kwargs: Any) -> RescaledEnv:
    """Make a Gymnasium env (any registered id, or ``some_module:EnvName-v0``) in our conventions.

    Args:
        env_id: a Gymnasium id such as ``Pendulum-v1``, ``HalfCheetah-v5`` or ``MultiGoal-v0``.
        seed: seeds the first reset and the action space's sampler.
        **kwargs: passed to ``gymnasium.make``.

    Returns:
        A :class:`RescaledEnv`: observations ``[obs_dim]`` float32 (Dict observations are
        flattened in Gymnasium's order, i.e. sorted by key), actions in [-1, 1]^action_dim.

    Raises:
        UsageError: for an unknown id, a module that cannot be imported or a missing simulator
            dependency, and for envs without bounded continuous actions.
    """
    import diffmaxent.envs  # noqa: F401  (registers MultiGoal-v0)

    if not isinstance(env_id, str) or not env_id.strip():
        raise UsageError("env id must be a non-empty string such as Pendulum-v1")
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError, AttributeError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"unknown or unusable env id {env_id!r}: {reason} "
            "(use a registered Gymnasium id such as Pendulum-v1 or MultiGoal-v0, "
            "or 'module:EnvName-v0')"
        ) from None
    try:
        spec = env_spec(env_id, env)
    except UsageError:
        env.close()
        raise
    return RescaledEnv(env, spec, seed)

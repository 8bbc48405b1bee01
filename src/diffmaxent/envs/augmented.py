"""The diffusion-augmented MDP of DMERL as a plain Gymnasium wrapper.

This is the readable form of :mod:`diffmaxent.diffusion.augmented` (see its docstring for the
MDP): one ``step`` per denoising transition, so an agent written for ordinary MDPs runs on it
unchanged. It is slow by design (``K`` Python round-trips per env step); agents use the in-graph
form, and the tests check that both give identical transitions for the same keys.

Observation: a dict ``{"obs": s [obs_dim], "latent": x_k [A], "step": k}``; action: the next latent
``x_{k+1}`` (unbounded). The prior latents come from a JAX key split once per env step with
:func:`diffmaxent.diffusion.augmented.split_step_key`, the same rule the in-graph sampler uses;
``step_key`` is the current env step's key, so a driver can draw the kernels' noise from it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import jax
import numpy as np

from diffmaxent.diffusion.augmented import PRIOR_STD, prior_sample


class AugmentedMDPEnv(gym.Wrapper):
    """Expand every step of ``env`` (actions in [-1, 1]) into ``num_steps`` denoising steps.

    * ``k < K-1``: returns ``(s, x_{k+1}, k+1)``, reward 0, never terminated or truncated;
      ``env`` is not stepped.
    * ``k = K-1``: steps ``env`` with ``tanh(x_K)``, returns its reward and end flags and
      ``(s', x_0', 0)`` with a fresh prior latent. ``info["env_step"]`` is True on these steps
      only; ``info["env_action"]`` is the executed action.
    """

    def __init__(
        self, env: gym.Env, num_steps: int, key: jax.Array, prior_std: float = PRIOR_STD
    ) -> None:
        super().__init__(env)
        if num_steps < 1:
            raise ValueError("num_steps must be positive")
        self.num_steps = num_steps
        self.prior_std = prior_std
        self.action_dim = int(np.prod(env.action_space.shape))
        self._key = key
        self.step_key: jax.Array = key
        self._obs: np.ndarray | None = None
        self._latent: np.ndarray | None = None
        self._step = 0
        self.observation_space = gym.spaces.Dict(
            {
                "obs": env.observation_space,
                "latent": gym.spaces.Box(-np.inf, np.inf, (self.action_dim,), np.float32),
                "step": gym.spaces.Discrete(num_steps),
            }
        )
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (self.action_dim,), np.float32)

    def _new_env_step(self) -> None:
        self._key, self.step_key = jax.random.split(self._key)
        self._latent = np.asarray(
            prior_sample(self.step_key, (self.action_dim,), self.prior_std), np.float32
        )
        self._step = 0

    def _observation(self) -> dict[str, Any]:
        return {"obs": self._obs, "latent": self._latent, "step": self._step}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = np.asarray(obs, np.float32)
        self._new_env_step()
        return self._observation(), info

    def step(self, action: np.ndarray):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        latent = np.asarray(action, np.float32).reshape(self.action_dim)
        if self._step < self.num_steps - 1:
            self._latent, self._step = latent, self._step + 1
            return self._observation(), 0.0, False, False, {"env_step": False}
        env_action = np.tanh(latent)
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        self._obs = np.asarray(obs, np.float32)
        self._new_env_step()
        info = {**info, "env_step": True, "env_action": env_action}
        return self._observation(), float(reward), bool(terminated), bool(truncated), info

"""DeepMind Control suite tasks as Gymnasium envs (``dmc:DOMAIN-TASK``), through dm_control's
suite directly (no shimmy).

* Observations: the task's observation dict flattened to one float32 vector, keys in the order
  the task's ``observation_spec()`` lists them (the suite's own order, e.g. ``position``,
  ``velocity`` for cheetah-run); ``DMCEnv.observation_keys`` gives each key's slice.
* Actions: the task's bounds (rescaled from [-1, 1] by :func:`make_env` like any env).
* Episodes end only at the suite's time limit (1000 control steps for the standard tasks), which
  is a truncation (the suite's discount stays 1 there); a step whose discount is 0 at an episode's
  end is a termination.
* ``seed`` seeds the task's random state (initial states and any task randomness).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from diffmaxent.errors import UsageError

DMC_PREFIX = "dmc:"


def parse_dmc_id(env_id: str) -> tuple[str, str]:
    """``dmc:cheetah-run`` -> ``("cheetah", "run")``; task names may hold ``-`` or ``_``
    (``dmc:ball_in_cup-catch``, ``dmc:finger-turn_hard``)."""
    name = env_id[len(DMC_PREFIX) :]
    domain, sep, task = name.partition("-")
    if not sep or not domain or not task:
        raise UsageError(f"bad DMC id {env_id!r}: expected dmc:DOMAIN-TASK, e.g. dmc:cheetah-run")
    return domain, task


def import_suite():
    try:
        from dm_control import suite
    except ImportError:
        raise UsageError(
            "DeepMind Control envs need dm_control: pip install 'diffmaxent[dmc]'"
        ) from None
    return suite


class DMCEnv(gym.Env):
    """One dm_control suite task with the Gymnasium API (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
        camera_id: int = 0,
    ) -> None:
        suite = import_suite()
        if (domain, task) not in suite.ALL_TASKS:
            known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS)
            raise UsageError(f"unknown DMC task dmc:{domain}-{task}; known: {known}")
        if render_mode not in (None, "rgb_array"):
            raise UsageError(f"DMC envs render only rgb_array, not {render_mode!r}")
        self._env = suite.load(domain, task)
        self.metadata = {**self.metadata, "render_fps": 1.0 / self._env.control_timestep()}
        self.render_mode = render_mode
        self._size = (height, width)
        self._camera_id = camera_id
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(
            np.asarray(spec.minimum, np.float32).reshape(spec.shape),
            np.asarray(spec.maximum, np.float32).reshape(spec.shape),
            dtype=np.float32,
        )
        self.observation_keys: list[tuple[str, slice]] = []
        start = 0
        for key, array_spec in self._env.observation_spec().items():
            size = int(np.prod(array_spec.shape))
            self.observation_keys.append((key, slice(start, start + size)))
            start += size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (start,), np.float32)
        control_steps = self._env._step_limit  # the suite's time limit / control timestep
        self.max_episode_steps = int(control_steps) if np.isfinite(control_steps) else None

    def _flat(self, observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.ravel(value) for value in observation.values()]).astype(
            np.float32
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # The suite draws initial states from the task's RandomState; reseeding it in place
            # avoids reloading the model (a second or more for dog).
            self._env.task._random = np.random.RandomState(seed)
        time_step = self._env.reset()
        return self._flat(time_step.observation), {}

    def step(self, action: np.ndarray):
        time_step = self._env.step(np.asarray(action, np.float64))
        ended = time_step.last()
        terminated = bool(ended and time_step.discount == 0.0)
        truncated = bool(ended and not terminated)
        return self._flat(time_step.observation), float(time_step.reward), terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        height, width = self._size
        return self._env.physics.render(height, width, camera_id=self._camera_id)

    def close(self) -> None:
        physics = getattr(self._env, "physics", None) if hasattr(self, "_env") else None
        if physics is not None:
            physics.free()  # releases the render context before the interpreter exits

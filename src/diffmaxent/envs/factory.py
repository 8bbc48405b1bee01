"""One way to make an environment: :func:`make_env` returns a Gymnasium env whose observations are
flat float32 vectors and whose actions live in [-1, 1]^|A|, with ``terminated`` and ``truncated``
kept apart so that agents bootstrap through time limits.

Four suites share it: Gymnasium ids (``HalfCheetah-v5``), DeepMind Control (``dmc:dog-run``, see
:mod:`diffmaxent.envs.dmc`), MyoSuite (``myo:myoHandReorient8-v0``) and MuJoCo Playground's
DeepMind Control tasks on MJX (``mjx:CheetahRun``, see :mod:`diffmaxent.envs.mjx`).
:func:`paper_env_id` names the env closest to what the MaxEntDP and DIME papers trained on for
each Gym MuJoCo task (``paper/Ant-v3``, see :mod:`diffmaxent.envs.paper_mujoco` and docs/envs.md).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from diffmaxent.config import task_of
from diffmaxent.envs import mixture_bandit, multigoal  # noqa: F401  (register their ids)
from diffmaxent.envs.dmc import DMC_PREFIX, DMCEnv, parse_dmc_id
from diffmaxent.envs.mjx import MJX_PREFIX, MJXGymEnv
from diffmaxent.envs.paper_mujoco import PAPER_ENVS, paper_id  # registers paper/<Task>-v3
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.errors import UsageError


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
        # Per-step work is a few numpy ops: the bounds are arrays once, and Box observations
        # skip gymnasium's generic flatten (a quarter of a fast simulator's step otherwise).
        self._low = np.asarray(spec.action_low, np.float32)
        self._half_range = 0.5 * (np.asarray(spec.action_high, np.float32) - self._low)
        self._env_action_dtype = env.action_space.dtype
        self._box_obs = isinstance(env.observation_space, gym.spaces.Box)

    def _flat(self, obs: Any) -> np.ndarray:
        if self._box_obs:
            return np.asarray(obs, dtype=np.float32).reshape(-1)
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
        # Same map as EnvSpec.to_env_action, with the bounds precomputed.
        unit = np.clip(np.asarray(action, np.float32).reshape(self.action_space.shape), -1.0, 1.0)
        env_action = self._low + (unit + 1.0) * self._half_range
        obs, reward, terminated, truncated, info = self.env.step(
            env_action.astype(self._env_action_dtype, copy=False)
        )
        return self._flat(obs), float(reward), bool(terminated), bool(truncated), info


class ActionRepeat(gym.Wrapper):
    """Applies each action ``repeat`` times and sums the rewards; stops early when the episode
    ends (``terminated`` / ``truncated`` and the last info are those of the final inner step)."""

    def __init__(self, env: gym.Env, repeat: int) -> None:
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class MyoSuccess(gym.Wrapper):
    """Adds ``info["success"]`` to MyoSuite steps: the episode so far has been ``solved`` on more
    than ``successful_steps`` steps, MyoSuite's own ``evaluate_success`` rule (strictly more than
    5)."""

    def __init__(self, env: gym.Env, successful_steps: int = 5) -> None:
        super().__init__(env)
        self.successful_steps = successful_steps
        self._solved_steps = 0

    def reset(self, **kwargs):
        self._solved_steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._solved_steps += int(bool(info.get("solved", False)))
        info = {**info, "success": self._solved_steps > self.successful_steps}
        return obs, reward, terminated, truncated, info


MYO_PREFIX = "myo:"


def env_suite(env_id: str) -> str:
    """``"dmc"`` for ``dmc:`` ids, ``"myo"`` for ``myo:`` ids, ``"mjx"`` for ``mjx:`` ids, else
    ``"gym"``."""
    if env_id.startswith(DMC_PREFIX):
        return "dmc"
    if env_id.startswith(MJX_PREFIX):
        return "mjx"
    if env_id.startswith(MYO_PREFIX):
        return "myo"
    return "gym"


# Gymnasium ids whose observations and rewards equal the paper env's, step for step from the same
# seed (tests/test_envs.py): v4 of the four tasks without contact forces, and v5 of the two
# without a healthy reward.
SAME_AS_PAPER_ENV = frozenset(
    {"HalfCheetah-v4", "HalfCheetah-v5", "Hopper-v4", "Swimmer-v4", "Swimmer-v5", "Walker2d-v4"}
)


def paper_env_id(task: str) -> str:
    """The env closest to what the MaxEntDP and DIME papers trained on (Gym v3 on mujoco-py) for
    one of the six Gym MuJoCo tasks: ``paper_env_id("Ant")`` and ``paper_env_id("Ant-v5")`` give
    ``"paper/Ant-v3"``.

    Raises:
        UsageError: for a task the papers did not run on Gym MuJoCo.
    """
    name = task_of(task)
    if name not in PAPER_ENVS:
        raise UsageError(
            f"no paper env for {task!r}; the papers' Gym MuJoCo tasks are {', '.join(PAPER_ENVS)}"
        )
    return paper_id(name)


def paper_env_warning(env_id: str) -> str | None:
    """What to tell a user who trains a preset with the papers' Gym settings on ``env_id``: None
    when ``env_id`` is not one of the six tasks or steps exactly like the paper env, else a
    sentence naming the paper env."""
    name = task_of(env_id)
    if name not in PAPER_ENVS or env_id in SAME_AS_PAPER_ENV or env_id == paper_id(name):
        return None
    return (
        f"the papers' {name} numbers come from Gym's {name}-v3 on mujoco-py, whose observations "
        f"or rewards differ from {env_id}'s; the closest env here is {paper_id(name)} "
        "(docs/envs.md)"
    )


def choose_offscreen_gl() -> str | None:
    """Pick MuJoCo's offscreen OpenGL backend when none is set and there is no display: EGL
    (Mesa's software renderer works without a GPU), else OSMesa. Must run before dm_control or
    a MuJoCo renderer is imported; returns the backend in use."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
            if ctypes.util.find_library(library):
                os.environ["MUJOCO_GL"] = backend
                os.environ.setdefault("PYOPENGL_PLATFORM", backend)
                break
    return os.environ.get("MUJOCO_GL")


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


def make_env(
    env_id: str,
    seed: int | None = None,
    *,
    action_repeat: int = 1,
    render_mode: str | None = None,
    **kwargs: Any,
) -> RescaledEnv:
    """Make an env of any supported suite in our conventions.

    Args:
        env_id: a Gymnasium id (``Pendulum-v1``, ``HalfCheetah-v5``, ``MultiGoal-v0``,
            ``some_module:EnvName-v0``), ``dmc:DOMAIN-TASK`` (``dmc:dog-run``; needs the ``dmc``
            extra), ``myo:ENV_ID`` (``myo:myoHandReorient8-v0``; needs the ``myo`` extra) or
            ``mjx:TASK[@IMPL]`` (``mjx:CartpoleBalance``; needs the ``mjx`` extra).
        seed: seeds the first reset and the action space's sampler.
        action_repeat: env steps per agent action, rewards summed (1 = off).
        render_mode: ``"rgb_array"`` makes ``env.render()`` return frames ``[H, W, 3]`` uint8,
            offscreen (EGL or OSMesa when there is no display).
        **kwargs: passed to ``gymnasium.make`` (Gymnasium and MyoSuite ids).

    Returns:
        A :class:`RescaledEnv`: observations ``[obs_dim]`` float32 (Dict observations are
        flattened in Gymnasium's order, i.e. sorted by key), actions in [-1, 1]^action_dim.

    Raises:
        UsageError: for an unknown id, a module that cannot be imported or a missing simulator
            dependency, and for envs without bounded continuous actions.
    """
    if not isinstance(env_id, str) or not env_id.strip():
        raise UsageError("env id must be a non-empty string such as Pendulum-v1")
    if env_id.count(":") > 1:
        raise UsageError(
            f"bad env id {env_id!r}: more than one ':' (use Env-v0, module:Env-v0, "
            "dmc:DOMAIN-TASK, myo:ENV_ID or mjx:TASK)"
        )
    if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
        raise UsageError(f"action_repeat must be an integer >= 1, got {action_repeat!r}")
    suite = env_suite(env_id)
    if render_mode is not None or suite == "dmc":
        # Before dm_control or a MuJoCo renderer is first imported: both fix their GL backend then.
        choose_offscreen_gl()
    if suite == "dmc":
        env = _make_dmc(env_id, render_mode)
    elif suite == "mjx":
        env = MJXGymEnv(env_id, render_mode=render_mode)
    elif suite == "myo":
        env = MyoSuccess(_make_gym(env_id[len(MYO_PREFIX) :], env_id, render_mode, kwargs))
    else:
        env = _make_gym(env_id, env_id, render_mode, kwargs)
    try:
        spec = env_spec(env_id, env)
    except UsageError:
        env.close()
        raise
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    return RescaledEnv(env, spec, seed)


def _make_dmc(env_id: str, render_mode: str | None) -> gym.Env:
    domain, task = parse_dmc_id(env_id)
    # MuJoCo 3.17 warns through absl, at every load, that the suite's XML uses `settotalmass`.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return DMCEnv(domain, task, render_mode=render_mode)
    finally:
        absl_logger.setLevel(level)


def _make_gym(name: str, env_id: str, render_mode: str | None, kwargs: dict) -> gym.Env:
    if env_id.startswith(MYO_PREFIX):
        try:
            import myosuite  # noqa: F401  (registers the myo* ids)
        except ImportError:
            raise UsageError("MyoSuite envs need myosuite: pip install 'diffmaxent[myo]'") from None
    if render_mode is not None:
        kwargs = {**kwargs, "render_mode": render_mode}
    try:
        with warnings.catch_warnings():
            # MyoSuite's model builder warns at every make about its own spec prefixes.
            warnings.filterwarnings("ignore", message="Attaching a spec with an empty prefix")
            return gym.make(name, **kwargs)
    except (gym.error.Error, ImportError, AttributeError, TypeError) as error:
        if render_mode is not None and isinstance(error, TypeError) and "render_mode" in str(error):
            raise UsageError(f"{env_id} cannot render frames (it has no render_mode)") from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if env_id.startswith(MYO_PREFIX):
            hint = "use a registered MyoSuite id such as myo:myoHandReorient8-v0"
        elif task_of(env_id) in PAPER_ENVS:
            hint = f"use {paper_id(task_of(env_id))}: Gym v3 as the papers ran it, on this MuJoCo"
        else:
            hint = (
                "use a registered Gymnasium id such as Pendulum-v1 or MultiGoal-v0, "
                "'module:EnvName-v0', dmc:DOMAIN-TASK or myo:ENV_ID"
            )
        raise UsageError(f"unknown or unusable env id {env_id!r}: {reason} ({hint})") from None

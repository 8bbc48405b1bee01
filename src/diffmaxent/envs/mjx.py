"""MuJoCo Playground's DeepMind Control tasks on MJX (``mjx:TASK``), as a pure functional env for
jitted, vmapped training (:class:`MJXEnv`) and as a Gymnasium env for the host loops
(:class:`MJXGymEnv`, through :func:`~diffmaxent.envs.make_env`). Needs the ``mjx`` extra
(``playground`` 0.2.0 and ``mujoco-mjx`` 3.17.0).

* Ids: ``mjx:CartpoleBalance``, ``mjx:CheetahRun``, ``mjx:HumanoidRun``, ``mjx:WalkerWalk``, ...:
  the names of Playground's ``dm_control_suite`` (:func:`mjx_tasks`). Playground's locomotion and
  manipulation envs are refused with one line: they clone MuJoCo Menagerie from GitHub at first
  use, and nothing here downloads at run time. The DeepMind Control XMLs ship in the wheel.
* Physics backend: the id's suffix. ``mjx:CheetahRun`` (= ``mjx:CheetahRun@jax``) is MJX's
  pure-JAX implementation, on CPU and GPU alike; ``mjx:CheetahRun@warp`` is MuJoCo Warp, meant
  for NVIDIA GPUs (on a CPU it compiles its kernels for minutes). The backend is part of the id
  so that a run's ``config.json`` names the physics it trained on; the two differ numerically.
* Observations: the task's observation vector as float32 ``[obs_dim]`` (Playground concatenates
  DeepMind Control's observation dict in the suite's key order). Non-finite entries are returned
  as 0 on the terminating step (below), so that a target ``r + γ (1 - terminated) V(s')`` stays
  finite.
* Actions: ``[action_dim]`` in [-1, 1], clipped, then mapped to the actuators' control range
  (``[-1, 1]`` for every task of Playground 0.2.0, so the map is the identity there).
* Episodes: we count control steps; an episode is truncated (``terminated`` False) at the task's
  ``episode_length`` (1000 control steps for every task), as dm_control's time limit. It
  terminates only where Playground's task says ``done``, which for every DeepMind Control task is
  non-finite physics (NaN ``qpos`` or ``qvel``), and where the observation or reward is
  non-finite; its reward then counts 0.
* Action repeat: each action is applied ``action_repeat`` control steps, rewards summed, stopping
  early at an episode's end (like :class:`~diffmaxent.envs.factory.ActionRepeat`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.envs.spec import EnvSpec
from diffmaxent.errors import UsageError

MJX_PREFIX = "mjx:"
IMPLS = ("jax", "warp")
DEFAULT_IMPL = "jax"
EXTRA_HINT = "pip install 'diffmaxent[mjx]'"


def parse_mjx_id(env_id: str) -> tuple[str, str]:
    """``mjx:CheetahRun`` -> ``("CheetahRun", "jax")``; ``mjx:CheetahRun@warp`` ->
    ``("CheetahRun", "warp")``."""
    name = env_id[len(MJX_PREFIX) :] if env_id.startswith(MJX_PREFIX) else env_id
    task, sep, impl = name.partition("@")
    if not task or (sep and impl not in IMPLS):
        raise UsageError(
            f"bad MJX id {env_id!r}: expected mjx:TASK or mjx:TASK@IMPL with IMPL one of "
            f"{', '.join(IMPLS)}, e.g. mjx:CheetahRun or mjx:CheetahRun@warp"
        )
    return task, impl or DEFAULT_IMPL


def import_playground():
    """Playground's package, or a one-line :class:`UsageError` naming the ``mjx`` extra."""
    try:
        import mujoco_playground
    except ImportError:
        raise UsageError(
            f"MuJoCo Playground envs (mjx:) need playground and mujoco-mjx: {EXTRA_HINT}"
        ) from None
    return mujoco_playground


def mjx_tasks() -> tuple[str, ...]:
    """The task names ``mjx:`` ids accept: Playground's DeepMind Control suite."""
    return tuple(import_playground().dm_control_suite.ALL_ENVS)


@functools.cache
def load_task(task: str, impl: str) -> Any:
    """Playground's env of a DeepMind Control task with physics backend ``impl`` (loaded once per
    process: the jitted functions built on it are cached with it)."""
    playground = import_playground()
    suite = playground.dm_control_suite
    if task not in suite.ALL_ENVS:
        if task in playground.registry.ALL_ENVS:
            raise UsageError(
                f"mjx:{task} is a Playground locomotion or manipulation env, which downloads "
                "MuJoCo Menagerie at first use; mjx: ids cover the DeepMind Control tasks only "
                f"({', '.join(suite.ALL_ENVS)})"
            )
        raise UsageError(f"unknown MJX task mjx:{task}; known: {', '.join(suite.ALL_ENVS)}")
    if impl == "warp":
        import warp

        warp.config.quiet = True  # else every compiled kernel prints a line
    try:
        return suite.load(task, config_overrides={"impl": impl})
    except Exception as error:  # Playground's own code failing on this MuJoCo (ReacherEasy)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UsageError(
            f"Playground cannot load mjx:{task} with impl={impl}: {type(error).__name__}: {reason}"
        ) from None


class MJXState(NamedTuple):
    """One env's state (batch dimensions lead every leaf under ``vmap``).

    Attributes:
        physics: Playground's state (MJX data, last observation and reward, metrics).
        obs: ``[obs_dim]`` float32, the observation the next action is chosen from (a new
            episode's first one after an episode ended).
        steps: ``[]`` int32, control steps taken in this episode.
        key: ``[2]`` uint32, the PRNG key the next episode's initial state is drawn from.
    """

    physics: Any
    obs: jax.Array
    steps: jax.Array
    key: jax.Array


def _select(condition: jax.Array, if_true: Any, if_false: Any) -> Any:
    """Leaf by leaf ``where(condition, if_true, if_false)`` for a scalar ``condition``."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


@dataclasses.dataclass(frozen=True, eq=False)
class MJXEnv:
    """A Playground DeepMind Control task as pure functions (see the module docstring).

    ``reset`` and ``step`` are jit- and vmap-able; ``num_envs`` envs are ``jax.vmap`` over keys
    and states, e.g. ``jax.vmap(env.reset)(jax.random.split(key, num_envs))``.

    Attributes:
        env_id: ``mjx:TASK`` or ``mjx:TASK@warp``.
        task, impl: the Playground task name and physics backend.
        action_repeat: control steps per action.
        episode_length: control steps per episode (truncation at this count).
        control_dt: seconds per control step.
        obs_dim, action_dim: sizes of an observation and an action.
        action_low, action_high: the actuators' control range, ``action_dim`` floats each.
        playground_env: Playground's env object.
    """

    env_id: str
    task: str
    impl: str
    action_repeat: int
    episode_length: int
    control_dt: float
    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    playground_env: Any = dataclasses.field(repr=False)

    @property
    def max_episode_steps(self) -> int:
        """Actions per episode (the last one may run fewer than ``action_repeat`` steps)."""
        return math.ceil(self.episode_length / self.action_repeat)

    @property
    def spec(self):
        """The :class:`~diffmaxent.envs.EnvSpec` agents are built from."""
        return EnvSpec(
            self.env_id, self.obs_dim, self.action_dim, self.action_low, self.action_high
        )

    def reset(self, key: jax.Array) -> MJXState:
        """Start an episode: ``key`` ``[2]`` uint32 (``jax.random.PRNGKey``) draws the initial
        state; the returned state's ``obs`` ``[obs_dim]`` is its first observation."""
        reset_key, next_key = jax.random.split(key)
        physics = self.playground_env.reset(reset_key)
        obs = jnp.asarray(physics.obs, jnp.float32).reshape(-1)
        return MJXState(physics, obs, jnp.zeros((), jnp.int32), next_key)

    def to_env_action(self, action: jax.Array) -> jax.Array:
        """``[..., action_dim]`` in [-1, 1] (clipped) -> the actuators' control range."""
        low = jnp.asarray(self.action_low, jnp.float32)
        high = jnp.asarray(self.action_high, jnp.float32)
        unit = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        return low + (unit + 1.0) * 0.5 * (high - low)

    def advance(
        self, state: MJXState, env_action: jax.Array
    ) -> tuple[MJXState, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Apply ``env_action`` ``[action_dim]`` (in the control range) for ``action_repeat``
        control steps, stopping at the episode's end, without starting a new episode.

        Returns:
            ``(state, obs, reward, terminated, truncated)``: ``obs`` ``[obs_dim]`` float32 (also
            ``state.obs``), ``reward`` ``[]`` float32 summed over the steps taken, ``terminated``
            and ``truncated`` ``[]`` bool, never both True.
        """
        env_action = jnp.asarray(env_action, jnp.float32).reshape(self.action_dim)

        def control_step(carry, _):
            physics, steps, reward, terminated, truncated = carry
            running = ~(terminated | truncated)
            candidate = self.playground_env.step(physics, env_action)
            step_reward = jnp.asarray(candidate.reward, jnp.float32)
            failed = (
                (candidate.done > 0)
                | ~jnp.isfinite(step_reward)
                | ~jnp.all(jnp.isfinite(candidate.obs))
            )
            physics = _select(running, candidate, physics)
            reward = reward + jnp.where(running & ~failed, step_reward, 0.0)
            steps = steps + running.astype(jnp.int32)
            terminated = terminated | (running & failed)
            truncated = truncated | (running & ~terminated & (steps >= self.episode_length))
            return (physics, steps, reward, terminated, truncated), None

        no = jnp.zeros((), bool)
        start = (state.physics, state.steps, jnp.zeros((), jnp.float32), no, no)
        (physics, steps, reward, terminated, truncated), _ = jax.lax.scan(
            control_step, start, None, length=self.action_repeat
        )
        obs = jnp.asarray(physics.obs, jnp.float32).reshape(-1)
        obs = jnp.where(jnp.isfinite(obs), obs, 0.0)
        return MJXState(physics, obs, steps, state.key), obs, reward, terminated, truncated

    def step(
        self, state: MJXState, action: jax.Array
    ) -> tuple[MJXState, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Take ``action`` ``[action_dim]`` in [-1, 1] and start a new episode where this one
        ends.

        Returns:
            ``(state, obs, reward, terminated, truncated)`` as :meth:`advance`, where ``obs`` is
            the real next observation (the episode's final one when it ended: bootstrap from it
            on truncation) and ``state.obs`` the one to act on next (a new episode's first
            observation when this one ended, drawn with ``state.key``).
        """
        stepped, obs, reward, terminated, truncated = self.advance(
            state, self.to_env_action(action)
        )
        next_state = _select(terminated | truncated, self.reset(stepped.key), stepped)
        return next_state, obs, reward, terminated, truncated

    def step_envs(
        self, states: MJXState, actions: jax.Array
    ) -> tuple[MJXState, jax.Array, jax.Array, jax.Array, jax.Array]:
        """:meth:`step` for many envs at once, with the same results as ``jax.vmap(step)``, but
        a new episode is drawn only on steps where some env's episode ended.

        ``vmap(step)`` computes every env's reset on every step and keeps it where an episode
        ended; a reset can cost far more than a step (Playground's CheetahRun settles its
        initial pose with 200 physics steps), so here the resets run under a ``lax.cond`` on
        "any env ended". (Under an outer ``vmap``, as over seeds with ``seed_batching="vmap"``,
        that cond becomes a select and both branches run again.)

        Args:
            states: env states with a leading ``[num_envs]`` axis.
            actions: ``[num_envs, action_dim]`` in [-1, 1].

        Returns:
            ``(states, obs, reward, terminated, truncated)`` as :meth:`step`, each with the
            leading ``[num_envs]`` axis.
        """
        stepped, obs, reward, terminated, truncated = jax.vmap(self.advance)(
            states, jax.vmap(self.to_env_action)(actions)
        )
        ended = terminated | truncated

        def start_new_episodes(stepped: MJXState) -> MJXState:
            return jax.vmap(_select)(ended, jax.vmap(self.reset)(stepped.key), stepped)

        next_states = jax.lax.cond(
            jnp.any(ended), start_new_episodes, lambda stepped: stepped, stepped
        )
        return next_states, obs, reward, terminated, truncated


def make_mjx_env(env_id: str, *, action_repeat: int = 1) -> MJXEnv:
    """The functional env of ``mjx:TASK[@IMPL]`` (see the module docstring).

    Raises:
        UsageError: for a bad or unknown id, a task that would download assets, or a missing
            ``mjx`` extra.
    """
    if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
        raise UsageError(f"action_repeat must be an integer >= 1, got {action_repeat!r}")
    task, impl = parse_mjx_id(env_id)
    import_playground()  # before the caches, which would hide a missing extra
    env = load_task(task, impl)
    model = env.mj_model
    if not model.actuator_ctrllimited.all():
        raise UsageError(f"mjx:{task} has unbounded actions; diffmaxent needs finite bounds")
    obs_size = env.observation_size
    if not isinstance(obs_size, int):
        raise UsageError(f"mjx:{task} has dict observations; diffmaxent needs a flat vector")
    return MJXEnv(
        env_id=MJX_PREFIX + task + ("" if impl == DEFAULT_IMPL else f"@{impl}"),
        task=task,
        impl=impl,
        action_repeat=action_repeat,
        episode_length=int(env._config.episode_length),
        control_dt=float(env.dt),
        obs_dim=int(obs_size),
        action_dim=int(model.nu),
        action_low=tuple(float(x) for x in model.actuator_ctrlrange[:, 0]),
        action_high=tuple(float(x) for x in model.actuator_ctrlrange[:, 1]),
        playground_env=env,
    )


@functools.cache
def _compiled(task: str, impl: str) -> tuple[MJXEnv, Any, Any]:
    """One env per task and backend with its jitted ``reset`` and ``advance``, shared by every
    :class:`MJXGymEnv` of the process (training, evaluation): MJX compiles for tens of seconds."""
    env = make_mjx_env(f"{MJX_PREFIX}{task}@{impl}")
    return env, jax.jit(env.reset), jax.jit(env.advance)


class MJXGymEnv(gym.Env):
    """One ``mjx:`` env with the Gymnasium API, stepped by jitted MJX functions on JAX's default
    device; :func:`~diffmaxent.envs.make_env` adds action repeat and the [-1, 1] action scale.

    ``reset(seed=s)`` draws the initial state from ``jax.random.PRNGKey(s)``; later resets
    without a seed continue that key's sequence (:attr:`MJXState.key`).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        env_id: str,
        *,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
        camera_id: int = 0,
    ) -> None:
        task, impl = parse_mjx_id(env_id)
        if render_mode not in (None, "rgb_array"):
            raise UsageError(f"MJX envs render only rgb_array, not {render_mode!r}")
        import_playground()  # before the cache, which would hide a missing extra
        self.functional, self._reset, self._advance = _compiled(task, impl)
        env = self.functional
        self.action_space = gym.spaces.Box(
            np.asarray(env.action_low, np.float32),
            np.asarray(env.action_high, np.float32),
            dtype=np.float32,
        )
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32)
        self.max_episode_steps = env.episode_length
        self.metadata = {**self.metadata, "render_fps": 1.0 / env.control_dt}
        self.render_mode = render_mode
        self._size = (height, width)
        self._camera_id = camera_id
        self._renderer = None
        self._state: MJXState | None = None
        self._key: jax.Array | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        elif self._key is None:  # Gymnasium's convention: unseeded means random
            self._key = jax.random.PRNGKey(int(self.np_random.integers(2**31)))
        self._state = self._reset(self._key)
        self._key = self._state.key
        return np.asarray(self._state.obs), {}

    def step(self, action: np.ndarray):
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        self._state, obs, reward, terminated, truncated = self._advance(
            self._state, np.asarray(action, np.float32)
        )
        return np.asarray(obs), float(reward), bool(terminated), bool(truncated), {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        import mujoco
        from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

        model = self.functional.playground_env.mj_model
        if self._renderer is None:
            # Gymnasium's offscreen renderer reads MUJOCO_GL when it starts (make_env sets it).
            self._render_data = mujoco.MjData(model)
            height, width = self._size
            self._renderer = MujocoRenderer(
                model, self._render_data, width=width, height=height, camera_id=self._camera_id
            )
        data = self._state.physics.data
        self._render_data.qpos[:] = np.asarray(data.qpos)
        self._render_data.qvel[:] = np.asarray(data.qvel)
        if model.nmocap:
            self._render_data.mocap_pos[:] = np.asarray(data.mocap_pos)
            self._render_data.mocap_quat[:] = np.asarray(data.mocap_quat)
        mujoco.mj_forward(model, self._render_data)
        return self._renderer.render("rgb_array")

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

"""Save and restore the full state of an env made by :func:`~diffmaxent.envs.make_env` (or a
``SyncVectorEnv`` of them), bit-exactly, as named numpy arrays plus JSON-serialisable info (no
pickles), so that a resumed training run steps exactly as the uninterrupted one would.

:func:`restore_env_state` expects an env made with the same id, seed and ``action_repeat`` as the
captured one (fresh or already reset: everything is overwritten). What is saved:

* Wrappers: :class:`~diffmaxent.envs.factory.RescaledEnv`'s pending first-reset seed and its
  action space's RNG, :class:`~diffmaxent.envs.factory.ActionRepeat`'s repeat, Gymnasium's
  ``TimeLimit`` elapsed steps, ``OrderEnforcing``'s has-reset flag and ``PassiveEnvChecker``'s
  first-call flags.
* Every base env: Gymnasium's ``np_random`` (its PCG64 state) and ``np_random_seed``.
* ``Pendulum-v1``: ``state`` and ``last_u``; ``MountainCarContinuous-v0``: ``state``.
* ``MultiGoal-v0``: the position and the drawn path.
* Gymnasium MuJoCo envs (v4 and v5 of Ant, HalfCheetah, Hopper, Humanoid, HumanoidStandup,
  InvertedPendulum, InvertedDoublePendulum, Pusher, Reacher, Swimmer, Walker2d, and the
  ``paper/`` ids of :mod:`~diffmaxent.envs.paper_mujoco`): the MjData, i.e.
  ``mj_getState(mjSTATE_INTEGRATION)`` (time, qpos, qvel, act, solver warm start, controls,
  applied forces, mocap, user and plugin state) plus every MjData array whose shape the model
  fixes. The derived arrays are saved, not recomputed:
  after ``mj_step`` they describe the state one substep back (positions, inertias, contact forces)
  and the envs read them before the next step (Ant's reward reads ``xpos``, Humanoid's
  ``xipos``, both observe ``cfrc_ext``).
* DeepMind Control (``dmc:``): the MjData as above, the model arrays the suite's tasks rewrite at
  episode start (target and object placement, sizes, colours, damping, tendon wrap directions,
  quadruped's terrain), the task's ``RandomState``, the per-episode attributes a task keeps (dog's
  stand height and body weight) and the control environment's step count and reset flag.
* ``SyncVectorEnv``: each sub-env under ``env<i>/``, the autoreset flags, the sub-envs' last
  observations (returned again by a partial reset) and the batched action space's RNG.

Not saved: MuJoCo's per-step contact and constraint arrays (its arena, sized by the step's
contacts). :func:`restore_env_state` rebuilds them with ``mj_forward`` for the restored positions,
which is what dm_control's step continues from; Gymnasium's ``mj_step`` rebuilds them before use,
so only code reading ``data.contact`` between two Gymnasium MuJoCo steps would see a difference.
Nor MjData's lazy-evaluation flags (every step clears them before use), nor renderers (restore
before the first render: quadruped's terrain reaches a render context only at episode start).

Unsupported (:class:`EnvStateUnsupported`): MyoSuite envs, dm_control's ``lqr`` (its model is drawn
at random at every make), MuJoCo models with plugins, and any env or wrapper class not listed above
(Box2D, custom envs, extra wrappers), because their state is unknown here.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from diffmaxent.envs.dmc import DMCEnv
from diffmaxent.envs.factory import ActionRepeat, RescaledEnv
from diffmaxent.envs.multigoal import MultiGoalEnv

Arrays = dict[str, np.ndarray]


class EnvStateUnsupported(Exception):
    """The env holds state that cannot be saved and restored exactly."""


# Wrapper state: plain attributes (None, bools, ints) per wrapper class.
_WRAPPER_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    RescaledEnv: ("_pending_seed",),
    ActionRepeat: ("repeat",),
    TimeLimit: ("_elapsed_steps",),
    OrderEnforcing: ("_has_reset",),
    PassiveEnvChecker: ("checked_reset", "checked_step", "checked_render", "close_called"),
}

# Per-episode attributes of Gymnasium's classic-control envs with continuous actions.
_CLASSIC_CONTROL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gymnasium.envs.classic_control.pendulum.PendulumEnv": ("state", "last_u"),
    "gymnasium.envs.classic_control.continuous_mountain_car.Continuous_MountainCarEnv": ("state",),
}

# These keep all their per-episode state in MjData (Pusher's and Reacher's goal attributes are
# only scratch for reset_model, which writes the goal into qpos).
_GYM_MUJOCO_MODULES = frozenset(
    f"gymnasium.envs.mujoco.{name}_v{version}"
    for name in (
        "ant",
        "half_cheetah",
        "hopper",
        "humanoid",
        "humanoidstandup",
        "inverted_double_pendulum",
        "inverted_pendulum",
        "pusher",
        "reacher",
        "swimmer",
        "walker2d",
    )
    for version in (4, 5)
) | {"diffmaxent.envs.paper_mujoco"}

# Every dm_control 1.0.50 suite task but lqr, with the Python attributes it sets per episode.
_DMC_TASK_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "acrobot.Balance": (),
    "ball_in_cup.BallInCup": (),
    "cartpole.Balance": (),
    "cheetah.Cheetah": ("_timeout_progress",),
    "dog.Fetch": ("_stand_height", "_body_weight"),
    "dog.Move": ("_stand_height", "_body_weight"),
    "dog.Stand": ("_stand_height", "_body_weight"),
    "finger.Spin": (),
    "finger.Turn": (),
    "fish.Swim": (),
    "fish.Upright": (),
    "hopper.Hopper": ("_timeout_progress",),
    "humanoid.Humanoid": (),
    "humanoid_CMU.HumanoidCMU": (),
    "manipulator.Bring": (),
    "pendulum.SwingUp": (),
    "point_mass.PointMass": (),
    "quadruped.Escape": (),
    "quadruped.Fetch": (),
    "quadruped.Move": (),
    "reacher.Reacher": (),
    "stacker.Stack": (),
    "swimmer.Swimmer": (),
    "walker.PlanarWalker": (),
}

# The MjModel arrays those tasks write in initialize_episode (or visualize_reward).
_DMC_MODEL_ARRAYS = (
    "body_pos",
    "body_quat",
    "dof_damping",
    "geom_pos",
    "geom_rgba",
    "geom_size",
    "hfield_data",
    "light_pos",
    "mat_rgba",
    "site_pos",
    "site_rgba",
    "site_size",
    "wrap_prm",
)

_MJ_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


def capture_env_state(env: gym.Env) -> tuple[Arrays, dict[str, Any]]:
    """Everything the future of `env` (made by ``make_env``, reset or not) depends on.

    Returns:
        ``(arrays, info)``: arrays by name (keys usable by ``np.savez``) and JSON-serialisable info.

    Raises:
        EnvStateUnsupported: for an env or wrapper whose state cannot be saved exactly.
    """
    layers, kind = _supported_layers(env)
    base = layers[-1]
    wrappers = [
        {name: _plain(getattr(layer, name)) for name in _WRAPPER_ATTRIBUTES[type(layer)]}
        for layer in layers[:-1]
    ]
    arrays: Arrays = {}
    info = {
        "layers": [_class_name(layer) for layer in layers],
        "wrappers": wrappers,
        "action_rng": generator_state(env.action_space._np_random),
        "np_random": generator_state(base._np_random),
        "np_random_seed": _plain(base._np_random_seed),
        "env": _CAPTURE[kind](base, arrays),
    }
    return arrays, info


def restore_env_state(env: gym.Env, arrays: Arrays, info: dict[str, Any]) -> None:
    """Put `env`, made like the captured env, into the state of :func:`capture_env_state`.

    Raises:
        EnvStateUnsupported: for an env that :func:`capture_env_state` does not support.
        ValueError: if `env` is not the kind of env that was captured.
    """
    layers, kind = _supported_layers(env)
    base = layers[-1]
    names = [_class_name(layer) for layer in layers]
    if names != info["layers"]:
        raise ValueError(f"the saved state is of {info['layers']}, this env is {names}")
    for layer, attributes in zip(layers[:-1], info["wrappers"], strict=True):
        for name, value in attributes.items():
            setattr(layer, name, value)
    env.action_space._np_random = generator_from_state(info["action_rng"])
    base._np_random = generator_from_state(info["np_random"])
    base._np_random_seed = info["np_random_seed"]
    _RESTORE[kind](base, arrays, info["env"])


def capture_vector_env_state(
    envs: gym.vector.SyncVectorEnv,
) -> tuple[Arrays, dict[str, Any]]:
    """:func:`capture_env_state` of every sub-env (arrays prefixed ``env<i>/``) and of the vector
    env's own state."""
    _check_sync_vector_env(envs)
    arrays: Arrays = {}
    sub_infos = []
    for index, env in enumerate(envs.envs):
        env_arrays, env_info = capture_env_state(env)
        arrays.update({f"env{index}/{name}": value for name, value in env_arrays.items()})
        sub_infos.append(env_info)
    # Until the first reset there are no last observations.
    if all(obs is not None for obs in envs._env_obs):
        arrays["vector/env_obs"] = np.stack(envs._env_obs)
    info = {
        "envs": sub_infos,
        "autoreset_mode": envs.autoreset_mode.value,
        "autoreset_envs": envs._autoreset_envs.tolist(),
        "action_rng": generator_state(envs.action_space._np_random),
    }
    return arrays, info


def restore_vector_env_state(
    envs: gym.vector.SyncVectorEnv, arrays: Arrays, info: dict[str, Any]
) -> None:
    """Put `envs`, made like the captured ones, into the state of
    :func:`capture_vector_env_state`."""
    _check_sync_vector_env(envs)
    if len(info["envs"]) != envs.num_envs or info["autoreset_mode"] != envs.autoreset_mode.value:
        raise ValueError(
            f"the saved state is of {len(info['envs'])} envs with {info['autoreset_mode']} "
            f"autoreset, these are {envs.num_envs} with {envs.autoreset_mode.value}"
        )
    for index, (env, env_info) in enumerate(zip(envs.envs, info["envs"], strict=True)):
        prefix = f"env{index}/"
        env_arrays = {
            name.removeprefix(prefix): value
            for name, value in arrays.items()
            if name.startswith(prefix)
        }
        restore_env_state(env, env_arrays, env_info)
    if "vector/env_obs" in arrays:
        envs._env_obs = [obs.copy() for obs in arrays["vector/env_obs"]]
    else:
        envs._env_obs = [None] * envs.num_envs
    envs._autoreset_envs = np.array(info["autoreset_envs"], dtype=np.bool_)
    envs.action_space._np_random = generator_from_state(info["action_rng"])


def _check_sync_vector_env(envs: gym.vector.VectorEnv) -> None:
    if type(envs) is not gym.vector.SyncVectorEnv:
        raise EnvStateUnsupported(
            f"only a plain SyncVectorEnv's state can be saved, not {_class_name(envs)}'s"
        )


def _supported_layers(env: gym.Env) -> tuple[list[gym.Env], str]:
    """`env`, the env it wraps, and so on down to the base env; and the base env's kind.

    Raises:
        EnvStateUnsupported: if the base env or a wrapper is not supported.
    """
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    kind = _base_kind(layers[-1])
    for layer in layers[:-1]:
        if type(layer) not in _WRAPPER_ATTRIBUTES:
            raise EnvStateUnsupported(
                f"the state of wrapper {_class_name(layer)} is unknown, so it cannot be saved"
            )
    return layers, kind


def _class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _plain(value: Any) -> Any:
    """A JSON-serialisable Python scalar for a numpy scalar (seeds may be numpy ints)."""
    return value.item() if isinstance(value, np.generic) else value


def generator_state(generator: np.random.Generator | None) -> dict[str, Any] | None:
    """A numpy generator's state as JSON (None for None); only PCG64, Gymnasium's and numpy's
    default, is accepted."""
    if generator is None:
        return None
    if not isinstance(generator.bit_generator, np.random.PCG64):
        raise EnvStateUnsupported(
            f"only PCG64 generators (Gymnasium's) can be saved, not "
            f"{type(generator.bit_generator).__name__}"
        )
    return generator.bit_generator.state


def generator_from_state(state: dict[str, Any] | None) -> np.random.Generator | None:
    if state is None:
        return None
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = state
    return generator


def _base_kind(env: gym.Env) -> str:
    name = _class_name(env)
    if name.startswith("myosuite."):
        raise EnvStateUnsupported(
            "MyoSuite envs keep simulator and Python-side state that cannot be saved"
        )
    if type(env) is DMCEnv:
        _dmc_task_attributes(env)  # raises for a task whose state is unknown
        return "dmc"
    if type(env) is MultiGoalEnv:
        return "multigoal"
    if name in _CLASSIC_CONTROL_ATTRIBUTES:
        return "classic_control"
    if type(env).__module__ in _GYM_MUJOCO_MODULES:
        return "gym_mujoco"
    raise EnvStateUnsupported(f"the state of env {name} is unknown, so it cannot be saved")


def _save_attributes(obj: object, names: tuple[str, ...], prefix: str, arrays: Arrays) -> list:
    """Saves each attribute as an array (numpy scalars keep their dtype as 0-d arrays); returns
    the names of those that are None (or not set yet)."""
    missing = []
    for name in names:
        value = getattr(obj, name, None)
        if value is None:
            missing.append(name)
        else:
            arrays[f"{prefix}{name}"] = np.asarray(value)
    return missing


def _load_attributes(
    obj: object, names: tuple[str, ...], prefix: str, arrays: Arrays, missing: list
) -> None:
    for name in names:
        if name in missing:
            setattr(obj, name, None)
        else:
            value = arrays[f"{prefix}{name}"]
            setattr(obj, name, value.copy() if value.ndim else value[()])


def _capture_classic_control(env: gym.Env, arrays: Arrays) -> dict[str, Any]:
    names = _CLASSIC_CONTROL_ATTRIBUTES[_class_name(env)]
    return {"missing": _save_attributes(env, names, "env/", arrays)}


def _restore_classic_control(env: gym.Env, arrays: Arrays, info: dict[str, Any]) -> None:
    names = _CLASSIC_CONTROL_ATTRIBUTES[_class_name(env)]
    _load_attributes(env, names, "env/", arrays, info["missing"])


def _capture_multigoal(env: MultiGoalEnv, arrays: Arrays) -> dict[str, Any]:
    arrays["env/position"] = env._position.copy()
    arrays["env/path"] = np.asarray(env._path, dtype=np.float32).reshape(-1, 2)
    return {}


def _restore_multigoal(env: MultiGoalEnv, arrays: Arrays, info: dict[str, Any]) -> None:
    env._position = arrays["env/position"].copy()
    env._path = [point.copy() for point in arrays["env/path"]]


def _capture_gym_mujoco(env: gym.Env, arrays: Arrays) -> dict[str, Any]:
    _capture_mjdata(env.model, env.data, arrays)
    return {}


def _restore_gym_mujoco(env: gym.Env, arrays: Arrays, info: dict[str, Any]) -> None:
    _restore_mjdata(env.model, env.data, arrays)


def _model_sized_arrays(model: mujoco.MjModel, data: mujoco.MjData) -> list[str]:
    """Names of the non-empty MjData arrays whose shape the model fixes. The others live in
    MuJoCo's arena, sized by the current contacts and constraints, and are empty in a new MjData."""
    reference = mujoco.MjData(model)
    names = []
    for name in dir(data):
        value = None if name.startswith("_") else getattr(data, name)
        if isinstance(value, np.ndarray) and value.size:
            if getattr(reference, name).shape == value.shape:
                names.append(name)
    return names


def _capture_mjdata(model: mujoco.MjModel, data: mujoco.MjData, arrays: Arrays) -> None:
    if model.nplugin:
        # Plugins may keep state outside MjData, and plugin_data holds pointers.
        raise EnvStateUnsupported("MuJoCo models with plugins keep state that cannot be saved")
    state = np.empty(mujoco.mj_stateSize(model, _MJ_STATE))
    mujoco.mj_getState(model, data, state, _MJ_STATE)
    arrays["physics/state"] = state
    for name in _model_sized_arrays(model, data):
        arrays[f"physics/{name}"] = getattr(data, name).copy()


def _restore_mjdata(model: mujoco.MjModel, data: mujoco.MjData, arrays: Arrays) -> None:
    mujoco.mj_setState(model, data, _saved(arrays, "physics/state"), _MJ_STATE)
    # Rebuilds the arena (contacts, constraints) for the restored positions: dm_control's step
    # starts with mj_step2, which uses those of the last mj_step1. The model-sized arrays written
    # next override what it recomputed.
    mujoco.mj_forward(model, data)
    for name in _model_sized_arrays(model, data):
        _copy_into(getattr(data, name), f"physics/{name}", arrays)


def _saved(arrays: Arrays, key: str) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"the saved state has no {key!r}: it is of another kind of env")
    return arrays[key]


def _copy_into(destination: np.ndarray, key: str, arrays: Arrays) -> None:
    """Writes the saved array in place (whoever holds `destination` sees the new values)."""
    saved = _saved(arrays, key)
    if destination.shape != saved.shape:
        raise ValueError(
            f"saved {key!r} has shape {saved.shape}, this env's {destination.shape}: "
            "the state is of another env"
        )
    destination[...] = saved


def _dmc_task_attributes(env: DMCEnv) -> tuple[str, ...]:
    task = env._env.task
    module = type(task).__module__
    name = f"{module.removeprefix('dm_control.suite.')}.{type(task).__qualname__}"
    if not module.startswith("dm_control.suite.") or name not in _DMC_TASK_ATTRIBUTES:
        raise EnvStateUnsupported(
            f"the state of DMC task {_class_name(task)} is unknown, so it cannot be saved"
            + (" (lqr draws its model at random at every make)" if name.startswith("lqr.") else "")
        )
    return _DMC_TASK_ATTRIBUTES[name]


def _capture_dmc(env: DMCEnv, arrays: Arrays) -> dict[str, Any]:
    control_env = env._env
    physics, task = control_env.physics, control_env.task
    for name in _DMC_MODEL_ARRAYS:
        arrays[f"model/{name}"] = getattr(physics.model, name).copy()
    _capture_mjdata(physics.model.ptr, physics.data.ptr, arrays)
    random_state = task.random.get_state(legacy=False)
    random_state["state"]["key"] = random_state["state"]["key"].tolist()
    return {
        "task_random": random_state,
        "task_missing": _save_attributes(task, _dmc_task_attributes(env), "task/", arrays),
        "step_count": control_env._step_count,
        "reset_next_step": control_env._reset_next_step,
    }


def _restore_dmc(env: DMCEnv, arrays: Arrays, info: dict[str, Any]) -> None:
    control_env = env._env
    physics, task = control_env.physics, control_env.task
    # The model first: the physics' derived arrays depend on it.
    for name in _DMC_MODEL_ARRAYS:
        _copy_into(getattr(physics.model, name), f"model/{name}", arrays)
    _restore_mjdata(physics.model.ptr, physics.data.ptr, arrays)
    random_state = info["task_random"]
    key = np.asarray(random_state["state"]["key"], dtype=np.uint32)
    task.random.set_state({**random_state, "state": {**random_state["state"], "key": key}})
    _load_attributes(task, _dmc_task_attributes(env), "task/", arrays, info["task_missing"])
    control_env._step_count = info["step_count"]
    control_env._reset_next_step = info["reset_next_step"]


_CAPTURE = {
    "classic_control": _capture_classic_control,
    "multigoal": _capture_multigoal,
    "gym_mujoco": _capture_gym_mujoco,
    "dmc": _capture_dmc,
}
_RESTORE = {
    "classic_control": _restore_classic_control,
    "multigoal": _restore_multigoal,
    "gym_mujoco": _restore_gym_mujoco,
    "dmc": _restore_dmc,
}

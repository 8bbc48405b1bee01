"""Exact save and restore of env state (diffmaxent.envs.snapshot): a restored env steps bitwise
like the env it was captured from, through a checkpoint's np.savez + JSON round trip."""

import io
import json

import gymnasium as gym
import numpy as np
import pytest

from diffmaxent.envs import make_env
from diffmaxent.envs.snapshot import (
    EnvStateUnsupported,
    capture_env_state,
    capture_vector_env_state,
    restore_env_state,
    restore_vector_env_state,
)

SEED = 3


def checkpoint_round_trip(arrays, info):
    """What a checkpoint does with a capture: arrays through np.savez, info through JSON."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer) as saved:
        loaded = {name: saved[name] for name in saved.files}
    return loaded, json.loads(json.dumps(info))


def training_step(env, action):
    """One step as a training loop takes it: an episode end is followed by a reset."""
    obs, reward, terminated, truncated, _ = env.step(action)
    reset_obs = env.reset()[0] if terminated or truncated else None
    return obs, reward, terminated, truncated, reset_obs


def assert_same_steps(env_a, env_b, rng, steps):
    """Steps both envs with the same random actions; every output must be bitwise equal.
    Returns the number of episode ends."""
    ends = 0
    for step in range(steps):
        action = rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32)
        out_a = training_step(env_a, action)
        out_b = training_step(env_b, action)
        names = ("obs", "reward", "terminated", "truncated")
        for name, a, b in zip(names, out_a[:4], out_b[:4], strict=True):
            assert np.array_equal(a, b), f"{name} differs at step {step}: {a} vs {b}"
        assert (out_a[4] is None) == (out_b[4] is None), f"only one env reset at step {step}"
        if out_a[4] is not None:
            assert np.array_equal(out_a[4], out_b[4]), f"reset obs differs at step {step}"
            ends += 1
    return ends


def skip_without_suite(env_id):
    if env_id.startswith("dmc:"):
        pytest.importorskip("dm_control")


# (env id, action repeat, steps before the capture, steps compared after it). Envs with short
# episodes (MultiGoal, Hopper and Humanoid falling, Pendulum) pass an episode end before the
# capture; the others are captured shortly before their time limit; every comparison crosses one.
CASES = [
    ("Pendulum-v1", 1, 250, 200),
    ("MountainCarContinuous-v0", 1, 980, 60),
    ("MultiGoal-v0", 1, 75, 60),
    ("HalfCheetah-v5", 1, 980, 60),
    ("Hopper-v5", 1, 150, 150),
    ("Ant-v5", 1, 980, 60),
    ("Humanoid-v5", 1, 100, 100),
    ("paper/Ant-v3", 1, 980, 60),
    ("dmc:cartpole-balance", 1, 980, 60),
    ("dmc:reacher-easy", 1, 980, 60),
    ("dmc:cheetah-run", 2, 480, 60),
]


@pytest.mark.parametrize(("env_id", "action_repeat", "before", "after"), CASES)
def test_restored_env_steps_bitwise_like_the_original(env_id, action_repeat, before, after):
    skip_without_suite(env_id)
    rng = np.random.default_rng(0)
    env_a = make_env(env_id, seed=SEED, action_repeat=action_repeat)
    env_a.reset()
    for _ in range(before):
        training_step(env_a, rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32))
    arrays, info = checkpoint_round_trip(*capture_env_state(env_a))
    env_b = make_env(env_id, seed=SEED, action_repeat=action_repeat)
    restore_env_state(env_b, arrays, info)
    assert assert_same_steps(env_a, env_b, rng, after) >= 1
    env_a.close()
    env_b.close()


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5", "dmc:reacher-easy"])
def test_capture_before_the_first_reset(env_id):
    """A never-reset env's capture makes even an already-used env behave as that fresh env: it
    refuses to step, and its first reset uses the pending seed."""
    skip_without_suite(env_id)
    env_a = make_env(env_id, seed=SEED)
    arrays, info = checkpoint_round_trip(*capture_env_state(env_a))
    env_b = make_env(env_id, seed=SEED)
    env_b.reset()
    for _ in range(5):
        env_b.step(env_b.action_space.sample())
    restore_env_state(env_b, arrays, info)
    if not env_id.startswith("dmc:"):  # DMC envs have no OrderEnforcing wrapper
        with pytest.raises(gym.error.ResetNeeded):
            env_b.step(np.zeros(env_b.action_space.shape, np.float32))
    assert np.array_equal(env_a.reset()[0], env_b.reset()[0])
    assert np.array_equal(env_a.action_space.sample(), env_b.action_space.sample())
    assert_same_steps(env_a, env_b, np.random.default_rng(0), 30)


@pytest.mark.parametrize("env_id", ["Ant-v5", "Humanoid-v5"])
def test_mujoco_derived_fields_are_restored_not_recomputed(env_id):
    """Rewards read MjData's derived arrays (Ant: xpos, Humanoid: xipos), which after mj_step lag
    one substep behind qpos: restoring only qpos/qvel (and recomputing the rest) changes the
    reward of the first step, so the comparison above would catch it."""
    rng = np.random.default_rng(0)
    env_a = make_env(env_id, seed=SEED)
    env_a.reset()
    for _ in range(20):
        env_a.step(rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32))
    arrays, info = checkpoint_round_trip(*capture_env_state(env_a))
    env_b = make_env(env_id, seed=SEED)
    restore_env_state(env_b, arrays, info)
    qpos_qvel_only = make_env(env_id, seed=SEED)
    restore_env_state(qpos_qvel_only, arrays, info)
    data = env_a.unwrapped.data
    # Gymnasium's set_state writes qpos and qvel, then recomputes the rest with mj_forward.
    qpos_qvel_only.unwrapped.set_state(data.qpos.copy(), data.qvel.copy())
    action = rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32)
    reward_a = env_a.step(action)[1]
    assert env_b.step(action)[1] == reward_a
    assert qpos_qvel_only.step(action)[1] != reward_a


@pytest.mark.parametrize(
    "autoreset_mode", [gym.vector.AutoresetMode.SAME_STEP, gym.vector.AutoresetMode.NEXT_STEP]
)
def test_vector_env(autoreset_mode):
    """Two Pendulums, as the rollout loop makes them, captured at their first time limit."""

    def make_envs():
        return gym.vector.SyncVectorEnv(
            [lambda i=i: make_env("Pendulum-v1", seed=SEED + i) for i in range(2)],
            autoreset_mode=autoreset_mode,
        )

    envs_a = make_envs()
    envs_a.reset()
    for _ in range(200):  # random exploration, as off-policy training starts
        envs_a.step(envs_a.action_space.sample())
    arrays, info = checkpoint_round_trip(*capture_vector_env_state(envs_a))
    assert "env1/env/state" in arrays
    envs_b = make_envs()
    restore_vector_env_state(envs_b, arrays, info)
    assert np.array_equal(envs_a.action_space.sample(), envs_b.action_space.sample())
    # A partial reset returns the other env's last observation, which the capture holds too.
    mask = np.array([True, False])
    obs_a = envs_a.reset(options={"reset_mask": mask})[0]
    assert np.array_equal(obs_a, envs_b.reset(options={"reset_mask": mask})[0])
    rng = np.random.default_rng(0)
    ends = 0
    for step in range(210):  # NEXT_STEP resets env 1 first; both envs then reach a time limit
        actions = rng.uniform(-1, 1, envs_a.action_space.shape).astype(np.float32)
        out_a = envs_a.step(actions)
        out_b = envs_b.step(actions)
        for a, b in zip(out_a[:4], out_b[:4], strict=True):
            assert np.array_equal(a, b), f"step {step}"
        if "final_obs" in out_a[4]:
            assert np.array_equal(np.stack(out_a[4]["final_obs"]), np.stack(out_b[4]["final_obs"]))
        ends += int(np.sum(out_a[2] | out_a[3]))
    assert ends >= 2


def test_dmc_task_attributes_are_restored():
    """Dog tasks measure the stand height and body weight at episode start and keep them."""
    pytest.importorskip("dm_control")
    env_a = make_env("dmc:dog-stand", seed=SEED)
    env_a.reset()
    arrays, info = checkpoint_round_trip(*capture_env_state(env_a))
    env_b = make_env("dmc:dog-stand", seed=SEED)
    restore_env_state(env_b, arrays, info)
    assert_same_steps(env_a, env_b, np.random.default_rng(0), 5)


def test_myosuite_is_unsupported():
    pytest.importorskip("myosuite")
    env = make_env("myo:myoElbowPose1D6MRandom-v0", seed=SEED)
    with pytest.raises(EnvStateUnsupported, match="MyoSuite") as error:
        capture_env_state(env)
    assert "\n" not in str(error.value)
    env.close()


class UnknownEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def make_lqr():
    pytest.importorskip("dm_control")
    return make_env("dmc:lqr-lqr_2_1", seed=SEED)


@pytest.mark.parametrize(
    "make",
    [
        UnknownEnv,
        lambda: gym.wrappers.RecordEpisodeStatistics(make_env("Pendulum-v1", seed=SEED)),
        make_lqr,
    ],
    ids=["unknown env", "unknown wrapper", "dmc lqr"],
)
def test_unknown_state_is_unsupported(make):
    env = make()
    with pytest.raises(EnvStateUnsupported, match="cannot be saved"):
        capture_env_state(env)
    with pytest.raises(EnvStateUnsupported):
        restore_env_state(env, {}, {})


def test_restore_into_another_env_is_refused():
    arrays, info = capture_env_state(make_env("Hopper-v5", seed=SEED))
    with pytest.raises(ValueError, match="saved state"):
        restore_env_state(make_env("Walker2d-v5", seed=SEED), arrays, info)

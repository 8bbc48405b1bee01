"""The three benchmark suites through `make_env` and the CLI: Gymnasium MuJoCo, DeepMind Control
(incl. dog-run) and MyoSuite (a hand task).

Needs the `dmc` and `myo` extras (the README's test set-up installs `.[all,test]`).
"""

from __future__ import annotations

import json
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from diffmaxent.api import resolve_config
from diffmaxent.cli import main
from diffmaxent.envs import env_suite, make_env
from diffmaxent.errors import PresetSuiteWarning, UsageError

pytest.importorskip("dm_control")
pytest.importorskip("myosuite")

# id -> (obs_dim, action_dim, steps to the time limit)
SUITE_ENVS = {
    "HalfCheetah-v5": (17, 6, 1000),
    "dmc:cheetah-run": (17, 6, 1000),
    "dmc:dog-run": (223, 38, 1000),
    "myo:myoHandReorient8-v0": (200, 39, 50),
}


@pytest.fixture(params=list(SUITE_ENVS))
def env_id(request):
    return request.param


def run_episode(env, policy, limit=10_000):
    """Step to the episode end: (steps, terminated, truncated, rewards, observations)."""
    rewards, observations = [], []
    for step in range(1, limit + 1):
        obs, reward, terminated, truncated, _ = env.step(policy())
        rewards.append(reward)
        observations.append(obs)
        if terminated or truncated:
            return step, terminated, truncated, rewards, observations
    raise AssertionError(f"no episode end within {limit} steps")


def test_spaces_are_flat_float32_with_unit_action_bounds(env_id):
    obs_dim, action_dim, _ = SUITE_ENVS[env_id]
    env = make_env(env_id, seed=0)
    try:
        assert env.observation_space.shape == (obs_dim,)
        assert env.observation_space.dtype == np.float32
        assert env.action_space.shape == (action_dim,) and env.action_space.dtype == np.float32
        assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
        assert env.env_spec.obs_dim == obs_dim and env.env_spec.action_dim == action_dim
        obs, _ = env.reset()
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32 and np.isfinite(obs).all()
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32
        assert isinstance(reward, float)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
    finally:
        env.close()


def test_same_seed_same_episode_and_other_seed_differs(env_id):
    def rollout(seed):
        env = make_env(env_id, seed=seed)
        try:
            first, _ = env.reset()
            rng = np.random.default_rng(0)  # the same actions for every seed
            actions = rng.uniform(-1, 1, (20, env.env_spec.action_dim)).astype(np.float32)
            steps = [env.step(action) for action in actions]
            return first, np.stack([s[0] for s in steps]), np.array([s[1] for s in steps])
        finally:
            env.close()

    first_a, obs_a, rewards_a = rollout(3)
    first_b, obs_b, rewards_b = rollout(3)
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    first_c, _, _ = rollout(4)
    assert not np.array_equal(first_a, first_c)  # the seed reaches the initial state


def test_time_limit_is_a_truncation_not_a_termination(env_id):
    _, action_dim, limit = SUITE_ENVS[env_id]
    env = make_env(env_id, seed=0)
    try:
        env.reset()
        # Zero actions keep the hand holding the object and never end the other tasks early.
        steps, terminated, truncated, _, _ = run_episode(
            env, lambda: np.zeros(action_dim, np.float32)
        )
        assert (steps, terminated, truncated) == (limit, False, True)
        obs, _ = env.reset()  # a new episode starts after the limit
        assert obs.shape == (SUITE_ENVS[env_id][0],)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("env_id", "seed"),
    [("Hopper-v5", 0), ("myo:myoHandReorient8-v0", 0)],
)
def test_failure_is_a_termination_not_a_truncation(env_id, seed):
    """Hopper falls and the hand drops the object under random actions: terminated, early."""
    env = make_env(env_id, seed=seed)
    try:
        env.reset()
        steps, terminated, truncated, _, _ = run_episode(env, env.action_space.sample)
        assert terminated and not truncated
        assert steps < (1000 if env_id == "Hopper-v5" else 50)
    finally:
        env.close()


def test_dmc_action_repeat_sums_rewards_and_shortens_the_episode():
    single = make_env("dmc:cheetah-run", seed=1)
    double = make_env("dmc:cheetah-run", seed=1, action_repeat=2)
    try:
        single.reset()
        double.reset()
        actions = np.random.default_rng(0).uniform(-1, 1, (5, 6)).astype(np.float32)
        for action in actions:
            r1 = single.step(action)[1]
            obs1, r1_second, *_ = single.step(action)
            obs2, r2, *_ = double.step(action)
            assert r2 == pytest.approx(r1 + r1_second, abs=1e-12)
            np.testing.assert_array_equal(obs1, obs2)
        steps, terminated, truncated, _, _ = run_episode(double, lambda: actions[0])
        assert (steps + 5, terminated, truncated) == (500, False, True)
    finally:
        single.close()
        double.close()


def test_dmc_observation_keys_follow_the_suites_order():
    env = make_env("dmc:cheetah-run", seed=0)
    try:
        keys = env.unwrapped.observation_keys
        assert [k for k, _ in keys] == ["position", "velocity"]
        assert keys[0][1] == slice(0, 8) and keys[1][1] == slice(8, 17)
        obs, _ = env.reset()
        physics = env.unwrapped._env.physics
        np.testing.assert_allclose(obs[keys[1][1]], physics.velocity(), rtol=1e-6)
    finally:
        env.close()


def test_action_rescaling_round_trip_reaches_the_simulator(env_id):
    env = make_env(env_id, seed=0)
    try:
        spec = env.env_spec
        actions = np.random.default_rng(1).uniform(-1, 1, (7, spec.action_dim)).astype(np.float32)
        env_actions = spec.to_env_action(actions)
        low, high = np.array(spec.action_low), np.array(spec.action_high)
        assert (env_actions >= low - 1e-6).all() and (env_actions <= high + 1e-6).all()
        np.testing.assert_allclose(spec.from_env_action(env_actions), actions, atol=1e-6)
        seen = []
        inner = env.env
        original_step = inner.step

        def spy(action):
            seen.append(np.array(action))
            return original_step(action)

        inner.step = spy
        env.reset()
        env.step(actions[0])
        env.step(np.full(spec.action_dim, 5.0, np.float32))  # clipped to the upper bound
        np.testing.assert_allclose(seen[0], env_actions[0], atol=1e-6)
        np.testing.assert_allclose(seen[1], high, atol=1e-6)
    finally:
        env.close()


def test_rendered_frame_is_a_non_blank_rgb_image(env_id):
    env = make_env(env_id, seed=0, render_mode="rgb_array")
    try:
        env.reset()
        env.step(env.action_space.sample())
        frame = env.render()
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
        assert frame.shape[0] >= 64 and frame.shape[1] >= 64
        assert frame.std() > 5.0 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 50
    finally:
        env.close()


def test_success_needs_more_than_five_solved_steps_like_myosuites_evaluate_success():
    import gymnasium as gym

    from diffmaxent.envs.factory import MyoSuccess

    class Solves(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(-1, 1, (1,))

        def reset(self, *, seed=None, options=None):
            return np.zeros(1, np.float32), {}

        def step(self, action):
            return np.zeros(1, np.float32), 0.0, False, False, {"solved": bool(action[0] > 0)}

    env = MyoSuccess(Solves())
    env.reset()
    flags = [env.step(np.array([sign]))[4]["success"] for sign in [1, -1, 1, 1, 1, 1, -1, 1, 1]]
    assert flags == [False] * 7 + [True, True]  # the 6th solved step (8th step) succeeds
    env.reset()
    assert env.step(np.array([1]))[4]["success"] is False  # counts restart with the episode


def test_myosuite_success_is_logged():
    env = make_env("myo:myoHandReorient8-v0", seed=0)
    try:
        env.reset()
        _, _, _, _, info = env.step(np.zeros(39, np.float32))
        assert info["success"] is False and "solved" in info
    finally:
        env.close()


@pytest.mark.parametrize(
    "env_id", ["Hopper-v5", "dmc:cheetah-run", "dmc:dog-run", "myo:myoHandReorient8-v0"]
)
def test_short_cli_train_run_then_eval(env_id, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--algo", "sac", "--env", env_id, "--steps", "300", "--out", str(out)]
    args += ["--set", "learning_starts=100", "--set", "eval_every=300", "--quiet"]
    args += ["--set", "eval_episodes=1", "--set", "batch_size=32"]
    if env_id.startswith("dmc:"):
        args += ["--set", "action_repeat=4"]  # 250-step evaluation episodes
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["env"] == env_id and config["env_spec"]["obs_dim"] == make_obs_dim(env_id)
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(",")[2]))
    if env_id.startswith("myo:"):
        assert "success_rate" in header
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "1"]) == 0
    assert "return" in capsys.readouterr().out


def make_obs_dim(env_id):
    return {"Hopper-v5": 11, **{k: v[0] for k, v in SUITE_ENVS.items()}}[env_id]


@pytest.mark.parametrize(
    "env_id", ["dmc:cheetah-run", "myo:myoHandReorient8-v0", "Hopper-v5", "MultiGoal-v0"]
)
def test_eval_video_writes_an_mp4_of_the_episodes_and_never_overwrites(env_id, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--algo", "sac", "--env", env_id, "--steps", "120", "--out", str(out)]
    args += ["--set", "learning_starts=100", "--set", "eval_every=120", "--quiet"]
    args += ["--set", "eval_episodes=1", "--set", "batch_size=32"]
    if env_id.startswith("dmc:"):
        args += ["--set", "action_repeat=8"]  # 125 frames
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "1", "--video", "--stochastic"]) == 0
    printed = capsys.readouterr().out
    video = out / "videos" / "step120-seed0.mp4"
    assert str(video) in printed
    reader = imageio.get_reader(str(video))
    if env_id.startswith("dmc:"):  # real time: cheetah-run's 0.01 s control step, 8 per frame
        assert reader.get_meta_data()["fps"] == pytest.approx(100 / 8)
    frames = np.stack([frame for frame in reader])
    reader.close()
    steps = int(printed.split("(")[-1].split()[0])
    assert frames.shape[0] == steps and steps >= 2
    assert frames[0].std() > 5.0
    assert main(["eval", str(out), "--episodes", "1", "--video"]) == 0
    assert (out / "videos" / "step120-seed0-1.mp4").exists()  # the first video is kept
    assert video.stat().st_size > 1000


def test_env_without_frames_gives_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--algo", "sac", "--env", "probe_envs:Probe-v0", "--steps", "40"]
    args += ["--out", str(out)]
    args += ["--set", "learning_starts=20", "--set", "eval_every=40", "--quiet"]
    args += ["--set", "eval_episodes=1", "--set", "batch_size=16"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--video"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffmaxent: error: ") and "\n" not in err
    assert "cannot render frames" in err
    assert not (out / "videos").exists() or not any((out / "videos").iterdir())


@pytest.mark.parametrize(
    ("module", "env_id", "extra"),
    [("dm_control", "dmc:cheetah-run", "dmc"), ("myosuite", "myo:myoHandReorient8-v0", "myo")],
)
def test_missing_extra_names_the_extra(monkeypatch, module, env_id, extra):
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(UsageError, match=rf"pip install 'diffmaxent\[{extra}\]'"):
        make_env(env_id)


@pytest.mark.parametrize(
    "env_id", ["dmc:cheetah", "dmc:nosuch-task", "myo:myoNoSuchEnv-v0", "dmc:-run"]
)
def test_bad_suite_ids_are_usage_errors(env_id):
    with pytest.raises(UsageError):
        make_env(env_id)


def test_suite_of_ids():
    assert [env_suite(e) for e in ["Hopper-v5", "dmc:dog-run", "myo:myoHandReachFixed-v0"]] == [
        "gym",
        "dmc",
        "myo",
    ]


@pytest.mark.parametrize(
    ("algo", "preset", "env_id", "warns"),
    [
        ("dime", "paper-gym", "dmc:dog-run", True),
        ("dime", "paper-dmc", "dmc:dog-run", False),
        ("dime", "paper-myo", "myo:myoHandReorient8-v0", False),
        ("crossq", "paper-dmc", "HalfCheetah-v5", True),
        ("maxentdp", "paper", "dmc:cheetah-run", True),
        ("maxentdp", "paper", "Hopper-v5", False),
        ("maxentdp", "cpu", "dmc:cheetah-run", False),
        ("diffppo", "paper", "HalfCheetah-v5", True),
    ],
)
def test_preset_for_another_suite_warns(algo, preset, env_id, warns, recwarn):
    resolve_config(algo, env_id, preset=preset)
    caught = [w for w in recwarn if issubclass(w.category, PresetSuiteWarning)]
    assert bool(caught) == warns
    if warns:
        assert preset in str(caught[0].message) and env_id in str(caught[0].message)


def test_cli_prints_the_suite_warning_in_one_line(tmp_path, capsys):
    args = ["train", "--algo", "dime", "--preset", "paper-gym", "--env", "dmc:nosuch-task"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("diffmaxent: warning: preset 'paper-gym' of dime holds gym")
    assert err[-1].startswith("diffmaxent: error: unknown DMC task")


@pytest.mark.parametrize(
    ("env_id", "obs_dim", "action_dim"),
    [
        ("Ant-v5", 105, 8),
        ("HalfCheetah-v5", 17, 6),
        ("Hopper-v5", 11, 3),
        ("Humanoid-v5", 348, 17),
        ("Swimmer-v5", 8, 2),
        ("Walker2d-v5", 17, 6),
    ],
)
def test_the_six_gym_mujoco_tasks_in_gymnasium_v5(env_id, obs_dim, action_dim):
    """v5's sizes; the papers ran v3 (Ant 111, Humanoid 376 numbers), whose closest envs here are
    the paper/ ids (tests/test_envs.py, docs/envs.md)."""
    env = make_env(env_id, seed=0)
    try:
        assert (env.env_spec.obs_dim, env.env_spec.action_dim) == (obs_dim, action_dim)
        obs, _ = env.reset()
        obs, reward, *_ = env.step(env.action_space.sample())
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32 and np.isfinite(reward)
    finally:
        env.close()

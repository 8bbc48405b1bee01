"""The rollout loop of on-policy agents (PPO, DiffPPO).

``num_envs`` environments in a :class:`gymnasium.vector.SyncVectorEnv` (synchronous: on a
2-core machine subprocesses only add IPC) -> ``rollout_steps`` vector steps, each one jitted
``collect`` call for all envs (for diffusion agents this runs all K denoising steps in-graph) ->
one jitted ``update`` on the whole rollout -> an evaluation point of the
:class:`~diffmaxent.loops.bookkeeping.RunRecorder` whenever a multiple of ``eval_every`` env steps
has been passed.

Training runs whole rollouts: ``ceil(steps / (num_envs * rollout_steps))`` of them, so the last
logged ``env_step`` can exceed ``steps`` by less than one rollout.

Episodes that end inside a rollout are reset at once (Gymnasium's same-step autoreset); the
real final observation is kept as ``next_obs`` so that a time-limit truncation bootstraps from
it while a termination does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from diffmaxent.agents.onpolicy import OnPolicyAgent, Rollout, example_rollout
from diffmaxent.config import hp, with_defaults
from diffmaxent.envs.factory import make_env
from diffmaxent.envs.snapshot import capture_vector_env_state, restore_vector_env_state
from diffmaxent.loops.bookkeeping import (
    EvaluationSchedule,
    RunSetup,
    SeedRecorders,
    Snapshot,
    TrainResult,
    capture_env,
    decode_floats,
    encode_floats,
    find_resume_points,
    fresh_seed,
    key_array,
    key_from_array,
    restore_env,
)
from diffmaxent.loops.seeds import SeedAxis

# One meaning for both kinds of loop: the device loop steps its envs under jax.vmap instead.
NUM_ENVS_HELP = (
    "environments stepped together (a gymnasium SyncVectorEnv; on mjx: envs, jax.vmap of the "
    "MJX env)"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutLoopConfig(with_defaults(EvaluationSchedule, eval_every=10_000)):
    """Settings of the rollout loop shared by PPO-style agents (their learning settings,
    including ``batch_size``, ``epochs`` and the GAE parameters, are agent hyperparameters
    because the agent's jitted ``update`` consumes them)."""

    num_envs: int = hp(8, NUM_ENVS_HELP, low=1)
    rollout_steps: int = hp(256, "env steps per environment between updates", low=1)


def make_vector_env(
    env_id: str, num_envs: int, seed: int, action_repeat: int = 1
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of :func:`make_env` (env ``i`` seeded ``seed + i``) with same-step
    autoreset: the returned observation after an episode end is the reset one and
    ``info["final_obs"]`` holds the real last one."""
    return gym.vector.SyncVectorEnv(
        [
            lambda i=i: make_env(env_id, seed=seed + i, action_repeat=action_repeat)
            for i in range(num_envs)
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


class EpisodeTracker:
    """Running returns of the training envs; ``last`` is the most recent finished episode's
    (None before the first)."""

    def __init__(self, num_envs: int) -> None:
        self.running = np.zeros(num_envs)
        self.last: float | None = None
        self.finished = 0

    def add(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.running += reward
        for i in np.flatnonzero(done):
            self.last = float(self.running[i])
            self.running[i] = 0.0
            self.finished += 1


def collect_rollout(
    agent: OnPolicyAgent,
    state: Any,
    envs: gym.vector.VectorEnv,
    obs: np.ndarray,
    key: jax.Array,
    num_steps: int,
    tracker: EpisodeTracker | None = None,
) -> tuple[Rollout, np.ndarray, jax.Array]:
    """Step ``envs`` ``num_steps`` times from ``obs [B, obs_dim]`` with ``agent.collect``.

    Returns:
        ``(rollout, the observation to continue from, the advanced key)``.
    """
    rollout, obs_after, key = collect_rollouts(
        SeedAxis(agent, 1), state, [envs], [obs], key, num_steps, [tracker]
    )
    return rollout, obs_after[0], key


def collect_rollouts(
    seeds: SeedAxis,
    state: Any,
    envs: Sequence[gym.vector.VectorEnv],
    obs: Sequence[np.ndarray],
    keys: jax.Array,
    num_steps: int,
    trackers: Sequence[EpisodeTracker | None],
    active: Callable[[int], bool] = lambda index: True,
) -> tuple[Rollout, list[np.ndarray], jax.Array]:
    """:func:`collect_rollout` for the seeds of a seed axis, each with its own envs: one
    ``collect`` call per vector step for all of them. Seeds that are not ``active`` step their
    envs with zero actions.

    Returns:
        ``(the packed rollout [S, num_steps, B, ...] (one seed: [num_steps, B, ...]), each seed's
        observation to continue from, the advanced keys)``.
    """
    obs = list(obs)
    lanes = [_RolloutRecord() for _ in envs]
    extras_per_step = []
    for _ in range(num_steps):
        keys, step_keys = seeds.split(keys)
        actions, extras = seeds.collect(state, seeds.pack(obs), step_keys)
        extras_per_step.append(extras)
        for index, action in enumerate(seeds.unpack(np.asarray(actions))):
            if not active(index):
                action = np.zeros_like(action)
            next_obs, reward, terminated, truncated, info = envs[index].step(action)
            real_next = np.array(next_obs, dtype=np.float32, copy=True)
            if "_final_obs" in info:
                for i in np.flatnonzero(info["_final_obs"]):
                    real_next[i] = info["final_obs"][i]
            lanes[index].add(obs[index], reward, real_next, terminated, truncated)
            if trackers[index] is not None:
                trackers[index].add(
                    np.asarray(reward, np.float64), np.logical_or(terminated, truncated)
                )
            obs[index] = np.asarray(next_obs, np.float32)
    parts = seeds.pack([lane.arrays() for lane in lanes])
    rollout = Rollout(extras=seeds.stack_steps(extras_per_step), **parts)
    return rollout, obs, keys


class _RolloutRecord:
    """One seed's host-side part of a rollout, step by step."""

    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.reward: list[np.ndarray] = []
        self.next_obs: list[np.ndarray] = []
        self.terminated: list[np.ndarray] = []
        self.truncated: list[np.ndarray] = []

    def add(self, obs, reward, next_obs, terminated, truncated) -> None:
        self.obs.append(obs)
        self.reward.append(reward)
        self.next_obs.append(next_obs)
        self.terminated.append(terminated)
        self.truncated.append(truncated)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "obs": np.stack(self.obs).astype(np.float32),
            "reward": np.stack(self.reward).astype(np.float32),
            "next_obs": np.stack(self.next_obs),
            "terminated": np.stack(self.terminated).astype(np.float32),
            "truncated": np.stack(self.truncated).astype(np.float32),
        }


@dataclasses.dataclass
class _Lane:
    """One seed's training envs and what the loop carries for it between rollouts."""

    envs: gym.vector.SyncVectorEnv
    obs: np.ndarray  # [num_envs, obs_dim]
    tracker: EpisodeTracker
    metrics: dict[str, float]


def run(setups: Sequence[RunSetup], agent: OnPolicyAgent) -> list[TrainResult]:
    """Train ``agent`` for ``config.steps`` env steps (whole rollouts) for each seed's setup (one,
    or several trained together on a seed axis) and fill their run directories. A step of this
    loop is one rollout and its update: evaluation points, checkpoints and stops on a signal fall
    between them."""
    config = setups[0].config
    loop = config.loop
    seeds = SeedAxis(agent, len(setups), setups[0].seed_batching)
    keys, state = seeds.start([setup.config.seed for setup in setups])
    template = seeds.member_shapes(state)  # one seed's state, for checkpoints
    steps_per_rollout = loop.num_envs * loop.rollout_steps
    iterations = -(-config.steps // steps_per_rollout)
    example = example_rollout(
        agent, template, setups[0].env_spec.obs_dim, loop.rollout_steps, loop.num_envs
    )
    metric_names = sorted(
        jax.eval_shape(agent.update, template, example, seeds.member_shapes(keys))[1]
    )
    resumes = find_resume_points(setups, template) if setups[0].resume else None
    recorders = SeedRecorders(
        setups, metric_names, iterations * steps_per_rollout, resumes, seeds.member
    )
    lanes: list[_Lane] = []
    iteration = 0
    try:
        for index, setup in enumerate(setups):
            seed = setup.config.seed
            envs = make_vector_env(config.env, loop.num_envs, seed, loop.action_repeat)
            lane = _Lane(envs, np.empty(0), EpisodeTracker(loop.num_envs), {})
            lanes.append(lane)
            if resumes is None:
                lane.obs = np.asarray(envs.reset()[0], np.float32)
                continue
            resume = resumes[index]
            info, iteration = resume.info, resume.info["iteration"]
            lane.obs = resume.arrays["obs"]
            lane.tracker.running = resume.arrays["episode_returns"]
            lane.tracker.last, lane.tracker.finished = info["last_episode_return"], info["episodes"]
            lane.metrics = decode_floats(info["metrics"])
            if not restore_env(
                envs,
                "envs/",
                resume.arrays,
                info["envs"],
                "training envs",
                restore_vector_env_state,
            ):
                envs.close()
                fresh = fresh_seed(seed, resume.env_step)
                lane.envs = make_vector_env(config.env, loop.num_envs, fresh, loop.action_repeat)
                lane.obs = np.asarray(lane.envs.reset()[0], np.float32)
                lane.tracker.running[:] = 0.0
        if resumes is not None:
            state = seeds.stack([resume.state for resume in resumes])
            keys = seeds.stack([key_from_array(resume.arrays["key"]) for resume in resumes])

        def snapshot_of(index: int) -> Snapshot:
            def snapshot() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
                lane = lanes[index]
                arrays = {
                    "key": key_array(seeds.member(keys, index)),
                    "obs": np.asarray(lane.obs),
                    "episode_returns": lane.tracker.running.copy(),
                }
                info = {
                    "iteration": iteration,
                    "last_episode_return": lane.tracker.last,
                    "episodes": lane.tracker.finished,
                    "metrics": encode_floats(lane.metrics),
                    "envs": capture_env(lane.envs, "envs/", arrays, capture_vector_env_state),
                }
                return arrays, info

            return snapshot

        snapshots = [snapshot_of(index) for index in range(len(setups))]
        env_step = iteration * steps_per_rollout
        while iteration < iterations:
            iteration += 1
            rollout, obs, keys = collect_rollouts(
                seeds,
                state,
                [lane.envs for lane in lanes],
                [lane.obs for lane in lanes],
                keys,
                loop.rollout_steps,
                [lane.tracker for lane in lanes],
                recorders.active,
            )
            keys, update_keys = seeds.split(keys)
            state, update_metrics = seeds.update(state, rollout, update_keys)
            for lane, lane_obs, metrics in zip(
                lanes, obs, seeds.unpack(jax.device_get(update_metrics)), strict=True
            ):
                lane.obs = lane_obs
                lane.metrics = {k: float(v) for k, v in metrics.items()}
            env_step = iteration * steps_per_rollout
            recorders.check_updates(
                env_step, [iteration] * len(lanes), [lane.metrics for lane in lanes]
            )
            recorders.bar.advance(steps_per_rollout)
            passed_eval = env_step // loop.eval_every > (env_step - steps_per_rollout) // (
                loop.eval_every
            )
            if passed_eval or iteration == iterations:
                keys, eval_keys = seeds.split(keys)
                recorders.evaluation_points(
                    agent,
                    state,
                    eval_keys,
                    env_step,
                    [lane.tracker.last for lane in lanes],
                    [iteration] * len(lanes),
                    [lane.metrics for lane in lanes],
                    snapshots,
                )
            recorders.stop_if_requested(state, env_step, snapshots)
        _, plot_keys = seeds.split(keys)
        return recorders.finish(agent, state, plot_keys, env_step)
    finally:
        recorders.close()
        for lane in lanes:
            lane.envs.close()

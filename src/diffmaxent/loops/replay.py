"""The replay loop of off-policy agents (SAC, MaxEntDP, DIME, CrossQ, DiffSAC, DiffWPO).

random warm-up -> (act, step env, store) -> sample ``updates_per_step`` batches -> one jitted
``update`` (a ``lax.scan`` over them) -> every ``eval_every`` steps an evaluation point of the
:class:`~diffmaxent.loops.bookkeeping.RunRecorder`.

The replay buffer is checkpointed incrementally: each checkpoint writes only the transitions added
since the previous one into ``RUN_DIR/replay`` (:meth:`ReplayBuffer.save_rows`), and chunks no kept
checkpoint needs are deleted.

Agents with ``update_improving_actions`` (DIPO) improve the actions of the transitions they train
on: the loop draws the row indices, hands the agent those rows and their improved actions so far,
and writes the actions it returns back to the same rows (``ReplayBuffer.improved_action``; a row
drawn twice in one call keeps its last gradient step's action). Each checkpoint then also saves
the whole improved-action array, since rewrites reach rows older than the last chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from diffmaxent import runs
from diffmaxent.agents.common import Agent
from diffmaxent.buffer import (
    ReplayBuffer,
    discard_rows_after,
    prune_improved_actions,
    prune_rows,
    zeros_batch,
)
from diffmaxent.config import hp
from diffmaxent.envs.snapshot import generator_from_state, generator_state
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
    replay_restorer,
    restore_env,
)
from diffmaxent.loops.seeds import SeedAxis


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayLoopConfig(EvaluationSchedule):
    """Settings of the replay loop shared by all off-policy agents."""

    batch_size: int = hp(256, "transitions per gradient step", low=1)
    buffer_size: int = hp(1_000_000, "replay capacity (oldest overwritten first)", low=1)
    learning_starts: int = hp(5_000, "env steps of uniform random actions before updates", low=0)
    updates_per_step: int = hp(1, "gradient steps per env step (one jitted scan)", low=1)


@dataclasses.dataclass
class ReplayState:
    """Everything one seed's future depends on besides the agent, the buffer and the envs (its
    JAX key is carried on the loop's seed axis)."""

    env_step: int  # env steps taken (= transitions ever stored)
    obs: np.ndarray  # [obs_dim], the observation to act on next
    episode_return: float  # of the episode in progress
    last_episode_return: float | None  # of the last finished one; None before the first
    updates: int
    rng: np.random.Generator  # warm-up actions and replay sampling
    metrics: dict[str, float]  # of the last update
    rows_saved: int  # transitions already written to the replay directory


def run(setups: Sequence[RunSetup], agent: Agent) -> list[TrainResult]:
    """Train ``agent`` up to ``config.steps`` env steps for each seed's setup (one, or several
    trained together on a seed axis) and fill their run directories."""
    config = setups[0].config
    loop = config.loop
    env_spec = setups[0].env_spec
    seeds = SeedAxis(agent, len(setups), setups[0].seed_batching)
    improves_actions = agent.update_improving_actions is not None
    keys, state = seeds.start([setup.config.seed for setup in setups])
    template = seeds.member_shapes(state)  # one seed's state, for checkpoints
    example = zeros_batch(
        env_spec.obs_dim, env_spec.action_dim, loop.batch_size, loop.updates_per_step
    )
    metric_names = sorted(
        jax.eval_shape(agent.update, template, example, seeds.member_shapes(keys))[1]
    )

    restore_buffer = replay_restorer(
        loop.buffer_size, env_spec.obs_dim, env_spec.action_dim, improves_actions
    )
    resumes = find_resume_points(setups, template, restore_buffer) if setups[0].resume else None
    envs: list[Any] = []
    recorders = SeedRecorders(setups, metric_names, config.steps, resumes, seeds.member)
    try:
        buffers, lanes = [], []
        for index, setup in enumerate(setups):
            seed = setup.config.seed
            env = config.make_env(seed)
            envs.append(env)
            if resumes is None:
                buffers.append(
                    ReplayBuffer(
                        loop.buffer_size, env_spec.obs_dim, env_spec.action_dim, improves_actions
                    )
                )
                obs, _ = env.reset()
                lanes.append(ReplayState(0, obs, 0.0, None, 0, np.random.default_rng(seed), {}, 0))
                continue
            resume = resumes[index]
            info = resume.info
            buffers.append(resume.extra)
            discard_rows_after(setup.run_dir / runs.REPLAY_DIR, resume.env_step)
            lane = ReplayState(
                env_step=resume.env_step,
                obs=resume.arrays["obs"],
                episode_return=info["episode_return"],
                last_episode_return=info["last_episode_return"],
                updates=info["updates"],
                rng=generator_from_state(info["rng"]),
                metrics=decode_floats(info["metrics"]),
                rows_saved=resume.env_step,
            )
            if not restore_env(env, "env/", resume.arrays, info["env"], "training env"):
                envs[index] = env = config.make_env(fresh_seed(seed, resume.env_step))
                lane.obs, lane.episode_return = env.reset()[0], 0.0
            lanes.append(lane)
        if resumes is not None:
            state = seeds.stack([resume.state for resume in resumes])
            keys = seeds.stack([key_from_array(resume.arrays["key"]) for resume in resumes])

        def snapshot_of(index: int) -> Snapshot:
            def snapshot() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
                lane, buffer = lanes[index], buffers[index]
                replay_dir = setups[index].run_dir / runs.REPLAY_DIR
                buffer.save_rows(replay_dir, lane.rows_saved)
                lane.rows_saved = buffer.inserted
                if improves_actions:
                    buffer.save_improved_actions(replay_dir)
                arrays = {
                    "key": key_array(seeds.member(keys, index)),
                    "obs": np.asarray(lane.obs),
                }
                info = {
                    "episode_return": lane.episode_return,
                    "last_episode_return": lane.last_episode_return,
                    "updates": lane.updates,
                    "rng": generator_state(lane.rng),
                    "metrics": encode_floats(lane.metrics),
                    "env": capture_env(envs[index], "env/", arrays),
                }
                return arrays, info

            return snapshot

        snapshots = [snapshot_of(index) for index in range(len(setups))]
        for step in range(lanes[0].env_step + 1, config.steps + 1):
            if step <= loop.learning_starts:
                actions = [
                    lane.rng.uniform(-1.0, 1.0, size=env_spec.action_dim).astype(np.float32)
                    for lane in lanes
                ]
            else:
                keys, act_keys = seeds.split(keys)
                obs = seeds.pack([lane.obs[None] for lane in lanes])
                packed = np.asarray(seeds.act(state, obs, act_keys, False))
                actions = [action[0] for action in seeds.unpack(packed)]
            for index, lane in enumerate(lanes):
                action = actions[index] if recorders.active(index) else np.zeros_like(actions[0])
                _step(envs[index], buffers[index], lane, action)
            if step >= loop.learning_starts:
                indices = [
                    buffer.sample_index(lane.rng, loop.batch_size, loop.updates_per_step)
                    for buffer, lane in zip(buffers, lanes, strict=True)
                ]
                batches = [
                    buffer.gather(index) for buffer, index in zip(buffers, indices, strict=True)
                ]
                keys, update_keys = seeds.split(keys)
                if improves_actions:
                    improved = [
                        buffer.improved_action[index]
                        for buffer, index in zip(buffers, indices, strict=True)
                    ]
                    state, metrics, improved = seeds.update_improving_actions(
                        state, seeds.pack(batches), seeds.pack(improved), update_keys
                    )
                    for buffer, index, actions in zip(
                        buffers, indices, seeds.unpack(np.asarray(improved)), strict=True
                    ):
                        buffer.write_improved_actions(index, actions)
                else:
                    state, metrics = seeds.update(state, seeds.pack(batches), update_keys)
                for lane, lane_metrics in zip(
                    lanes, seeds.unpack(jax.device_get(metrics)), strict=True
                ):
                    lane.updates += loop.updates_per_step
                    lane.metrics = {k: float(v) for k, v in lane_metrics.items()}
                recorders.check_updates(
                    step, [lane.updates for lane in lanes], [lane.metrics for lane in lanes]
                )
            for lane in lanes:
                lane.env_step = step
            recorders.bar.advance()

            if step % loop.eval_every == 0 or step == config.steps:
                keys, eval_keys = seeds.split(keys)
                recorders.evaluation_points(
                    agent,
                    state,
                    eval_keys,
                    step,
                    [lane.last_episode_return for lane in lanes],
                    [lane.updates for lane in lanes],
                    [lane.metrics for lane in lanes],
                    snapshots,
                )
                for index, buffer in enumerate(buffers):
                    if recorders.active(index):
                        replay_dir = setups[index].run_dir / runs.REPLAY_DIR
                        oldest_kept = recorders.oldest_kept_step(index)
                        prune_rows(replay_dir, oldest_kept - buffer.capacity)
                        if improves_actions:
                            prune_improved_actions(replay_dir, oldest_kept)
            recorders.stop_if_requested(state, step, snapshots)
        _, plot_keys = seeds.split(keys)
        return recorders.finish(agent, state, plot_keys, lanes[0].env_step)
    finally:
        recorders.close()
        for env in envs:
            env.close()


def _step(env: Any, buffer: ReplayBuffer, lane: ReplayState, action: np.ndarray) -> None:
    """Step the env with ``action``, store the transition, reset at an episode's end."""
    next_obs, reward, terminated, truncated, _ = env.step(action)
    buffer.add(lane.obs, action, reward, next_obs, terminated, truncated)
    lane.episode_return += reward
    lane.obs = next_obs
    if terminated or truncated:
        lane.last_episode_return, lane.episode_return = lane.episode_return, 0.0
        lane.obs, _ = env.reset()

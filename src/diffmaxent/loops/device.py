"""The device loop: training on ``mjx:`` envs with everything in one compiled program.

The envs (:class:`~diffmaxent.envs.mjx.MJXEnv`, ``num_envs`` of them under ``jax.vmap``), the
replay or rollout buffer, the agent's updates and the resets at episode ends all live on the
device; one jitted call runs a chunk of steps (a ``lax.fori_loop`` of about ``CALL_SECONDS`` of
work, never past the next evaluation point; how the steps are cut into calls does not change what
they compute), and the host only records: evaluation, metrics rows, checkpoints, the
NaN guard, progress and stops on signals, through the same
:class:`~diffmaxent.loops.bookkeeping.SeedRecorders` as the host loops, so the run directory is
the same.

* Off-policy agents (the ``replay`` loop's settings plus ``num_envs``): one step acts on all envs
  (uniform random actions while fewer than ``learning_starts`` env steps are stored), writes their
  ``num_envs`` transitions into a ring buffer of device arrays (:class:`DeviceBuffer`; the real
  final observation as ``next_obs``, ``terminated`` kept apart from ``truncated``), and, once
  ``learning_starts`` env steps are stored, runs the agent's ``update`` on ``updates_per_step``
  batches sampled uniformly from it. An env step counts one transition, so a step of this loop is
  ``num_envs`` env steps and the ratio of gradient steps to env steps is
  ``updates_per_step / num_envs``; the warm-up ends at the first step boundary at or after
  ``learning_starts``. Training ends at the first step boundary at or after ``steps``.
  Agents that improve replayed actions (DIPO) get the sampled rows' improved actions and write
  the returned ones back into the device buffer, as the replay loop does on the host; each
  checkpoint also saves the whole improved-action array.
* On-policy agents (the ``rollout`` loop's settings): one step is a scanned rollout of
  ``rollout_steps`` vector steps with the agent's ``collect``, then its ``update`` (GAE and
  minibatch epochs) on it, all in the same program.

Evaluation runs ``eval_episodes`` episodes together on the device, from envs reset with the
evaluation key alone (no evaluation env carries state between evaluations), each to its end,
returns summed. ``train_episode_return`` is the mean return of the training episodes that ended
at the latest step where any ended.

Checkpoints: the env states, the keys, the agent state and the counters are arrays, so a resumed
run repeats the uninterrupted one bit for bit. The replay buffer is written as the replay loop
writes it (only the rows added since the previous checkpoint, :meth:`ReplayBuffer.save_rows`).

NaN guard: the host sees the metrics of the last update of each chunk, and every checkpoint checks
the parameters; a NaN in between that does not reach either goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent import runs
from diffmaxent.agents.onpolicy import Rollout
from diffmaxent.buffer import (
    ReplayBuffer,
    discard_rows_after,
    prune_improved_actions,
    prune_rows,
    zeros_batch,
)
from diffmaxent.checkpoint import DamagedCheckpoint
from diffmaxent.config import hp
from diffmaxent.envs.mjx import MJXEnv, MJXState, make_mjx_env
from diffmaxent.errors import UsageError
from diffmaxent.loops.bookkeeping import (
    Evaluation,
    RunSetup,
    SeedRecorders,
    Snapshot,
    TrainResult,
    encode_floats,
    find_resume_points,
    replay_restorer,
)
from diffmaxent.loops.replay import ReplayLoopConfig
from diffmaxent.loops.rollout import NUM_ENVS_HELP, RolloutLoopConfig
from diffmaxent.loops.seeds import SeedAxis
from diffmaxent.types import Batch

# A host call's length: the progress display, the NaN check and stops on signals come between calls.
CALL_SECONDS = 2.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceReplayLoopConfig(ReplayLoopConfig):
    """Settings of the device loop for off-policy agents: the replay loop's, and the number of
    envs each step acts on (``updates_per_step`` gradient steps per step of all of them)."""

    num_envs: int = hp(1, NUM_ENVS_HELP, low=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceRolloutLoopConfig(RolloutLoopConfig):
    """Settings of the device loop for on-policy agents: the rollout loop's."""

    num_envs: int = hp(8, NUM_ENVS_HELP, low=1)


# --- on-device replay buffer ---------------------------------------------------------------------


class DeviceBuffer(NamedTuple):
    """A ring of transitions in device arrays; insert index ``i`` lives at row ``i % capacity``
    (the layout of :class:`~diffmaxent.buffer.ReplayBuffer`, whose chunk files save it).

    ``improved_action`` (agents that improve replayed actions, DIPO; None for the others) starts
    as the taken action and is rewritten at the rows the agent trained on, as in the host
    buffer."""

    obs: jax.Array  # [capacity, obs_dim]
    action: jax.Array  # [capacity, action_dim]
    reward: jax.Array  # [capacity]
    next_obs: jax.Array  # [capacity, obs_dim]: the real next observation, also at an episode end
    terminated: jax.Array  # [capacity] float32: no bootstrap
    truncated: jax.Array  # [capacity] float32: a time limit, bootstrap from next_obs
    inserted: jax.Array  # [] int32, transitions ever added
    improved_action: jax.Array | None = None  # [capacity, action_dim]

    @classmethod
    def empty(
        cls, capacity: int, obs_dim: int, action_dim: int, improved_actions: bool = False
    ) -> DeviceBuffer:
        zeros = functools.partial(jnp.zeros, dtype=jnp.float32)
        return cls(
            zeros((capacity, obs_dim)),
            zeros((capacity, action_dim)),
            zeros(capacity),
            zeros((capacity, obs_dim)),
            zeros(capacity),
            zeros(capacity),
            jnp.zeros((), jnp.int32),
            zeros((capacity, action_dim)) if improved_actions else None,
        )

    @property
    def capacity(self) -> int:
        return self.reward.shape[0]

    def insert(self, batch: Batch) -> DeviceBuffer:
        """Append ``N`` transitions (each field ``[N, ...]``, ``N <= capacity``), oldest rows
        overwritten first."""
        count = batch.reward.shape[0]
        rows = (self.inserted + jnp.arange(count)) % self.capacity
        fields = {
            name: getattr(self, name).at[rows].set(jnp.asarray(value, jnp.float32))
            for name, value in batch._asdict().items()
        }
        improved = self.improved_action
        if improved is not None:
            improved = improved.at[rows].set(jnp.asarray(batch.action, jnp.float32))
        return DeviceBuffer(**fields, inserted=self.inserted + count, improved_action=improved)

    def sample_rows(self, key: jax.Array, batch_size: int, num_batches: int) -> jax.Array:
        """Rows ``[num_batches, batch_size]`` drawn uniformly from the filled ones."""
        size = jnp.maximum(jnp.minimum(self.inserted, self.capacity), 1)
        return jax.random.randint(key, (num_batches, batch_size), 0, size)

    def gather(self, rows: jax.Array) -> Batch:
        """The transitions at ``rows`` (leading shape that of ``rows``)."""
        return Batch(*(getattr(self, name)[rows] for name in Batch._fields))

    def sample(self, key: jax.Array, batch_size: int, num_batches: int) -> Batch:
        """``num_batches`` batches of ``batch_size`` rows drawn uniformly from the filled rows
        (leading shape ``[num_batches, batch_size]``)."""
        return self.gather(self.sample_rows(key, batch_size, num_batches))

    def write_improved_actions(self, rows: jax.Array, actions: jax.Array) -> DeviceBuffer:
        """Store ``actions [*rows.shape, action_dim]`` as the improved actions of ``rows``; a row
        that occurs more than once keeps its last occurrence's (row-major order: the last
        gradient step that sampled it), as :meth:`ReplayBuffer.write_improved_actions` does."""
        flat_rows = rows.reshape(-1)
        flat_actions = actions.reshape(flat_rows.shape[0], -1)
        order = jnp.arange(flat_rows.shape[0])
        # A scatter with repeated indices promises no winner: write each row's last occurrence
        # only, and send the others past the end, where mode="drop" discards them.
        last = jnp.full(self.capacity, -1).at[flat_rows].max(order)
        targets = jnp.where(last[flat_rows] == order, flat_rows, self.capacity)
        improved = self.improved_action.at[targets].set(flat_actions, mode="drop")
        return self._replace(improved_action=improved)

    def to_host(self) -> ReplayBuffer:
        """The host :class:`ReplayBuffer` holding the same rows (for its chunk files)."""
        improves = self.improved_action is not None
        host = ReplayBuffer(self.capacity, self.obs.shape[1], self.action.shape[1], improves)
        for name in Batch._fields:
            setattr(host, name, np.asarray(getattr(self, name)))
        if improves:
            host.improved_action = np.asarray(self.improved_action)
        host.inserted = int(self.inserted)
        host.size = min(host.inserted, host.capacity)
        return host

    @classmethod
    def from_host(cls, buffer: ReplayBuffer) -> DeviceBuffer:
        fields = {name: jnp.asarray(getattr(buffer, name)) for name in Batch._fields}
        improved = buffer.improved_action
        return cls(
            **fields,
            inserted=jnp.asarray(buffer.inserted, jnp.int32),
            improved_action=None if improved is None else jnp.asarray(improved),
        )


# --- what a chunk carries ------------------------------------------------------------------------


class Episodes(NamedTuple):
    """Training-episode bookkeeping on the device."""

    running: jax.Array  # [num_envs] float32, return of each env's episode in progress
    last: jax.Array  # [] float32, see the module docstring (NaN before the first)
    finished: jax.Array  # [] int32, episodes ended so far

    @classmethod
    def start(cls, num_envs: int) -> Episodes:
        return cls(
            jnp.zeros(num_envs, jnp.float32),
            jnp.full((), jnp.nan, jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    def add(self, reward: jax.Array, done: jax.Array) -> Episodes:
        """Fold in one vector step's ``reward [num_envs]`` and ``done [num_envs]``."""
        running = self.running + reward
        ended = jnp.sum(done)
        mean_ended = jnp.sum(jnp.where(done, running, 0.0)) / jnp.maximum(ended, 1)
        return Episodes(
            jnp.where(done, 0.0, running),
            jnp.where(ended > 0, mean_ended, self.last),
            self.finished + ended.astype(jnp.int32),
        )


class Carry(NamedTuple):
    """One seed's whole training state between host calls."""

    agent: Any  # the agent state
    envs: MJXState  # [num_envs, ...]
    buffer: DeviceBuffer | None  # off-policy agents only
    key: jax.Array
    env_step: jax.Array  # [] int32, env steps taken (transitions)
    updates: jax.Array  # [] int32, gradient steps (off-policy) or updates (on-policy) so far
    episodes: Episodes
    metrics: dict[str, jax.Array]  # of the last update


def _replay_step(env: MJXEnv, agent: Any, loop: DeviceReplayLoopConfig) -> Callable[[Carry], Carry]:
    """One step of the off-policy device loop (see the module docstring)."""

    def step(carry: Carry) -> Carry:
        key, act_key, sample_key, update_key = jax.random.split(carry.key, 4)
        obs = carry.envs.obs
        shape = (loop.num_envs, env.action_dim)
        action = jax.lax.cond(
            carry.env_step < loop.learning_starts,
            lambda: jax.random.uniform(act_key, shape, jnp.float32, -1.0, 1.0),
            lambda: jnp.asarray(agent.act(carry.agent, obs, act_key, False), jnp.float32),
        )
        envs, next_obs, reward, terminated, truncated = env.step_envs(carry.envs, action)
        to_float = functools.partial(jnp.asarray, dtype=jnp.float32)
        buffer = carry.buffer.insert(
            Batch(obs, action, reward, next_obs, to_float(terminated), to_float(truncated))
        )
        env_step = carry.env_step + loop.num_envs

        def learn() -> tuple[Any, dict[str, jax.Array], DeviceBuffer, jax.Array]:
            rows = buffer.sample_rows(sample_key, loop.batch_size, loop.updates_per_step)
            batches = buffer.gather(rows)
            if buffer.improved_action is None:
                state, metrics = agent.update(carry.agent, batches, update_key)
                improved_buffer = buffer
            else:
                state, metrics, improved = agent.update_improving_actions(
                    carry.agent, batches, buffer.improved_action[rows], update_key
                )
                improved_buffer = buffer.write_improved_actions(rows, improved)
            return state, metrics, improved_buffer, carry.updates + loop.updates_per_step

        agent_state, metrics, buffer, updates = jax.lax.cond(
            env_step >= loop.learning_starts,
            learn,
            lambda: (carry.agent, carry.metrics, buffer, carry.updates),
        )
        return Carry(
            agent_state,
            envs,
            buffer,
            key,
            env_step,
            updates,
            carry.episodes.add(reward, terminated | truncated),
            metrics,
        )

    return step


def _rollout_step(
    env: MJXEnv, agent: Any, loop: DeviceRolloutLoopConfig
) -> Callable[[Carry], Carry]:
    """One step of the on-policy device loop: a rollout and the agent's update on it."""

    def env_step(inputs: tuple[Any, MJXState, Episodes], key: jax.Array):
        agent_state, envs, episodes = inputs
        obs = envs.obs
        action, extras = agent.collect(agent_state, obs, key)
        envs, next_obs, reward, terminated, truncated = env.step_envs(envs, action)
        episodes = episodes.add(reward, terminated | truncated)
        record = (obs, extras, reward, next_obs, terminated, truncated)
        return (agent_state, envs, episodes), record

    def step(carry: Carry) -> Carry:
        key, rollout_key, update_key = jax.random.split(carry.key, 3)
        (_, envs, episodes), record = jax.lax.scan(
            env_step,
            (carry.agent, carry.envs, carry.episodes),
            jax.random.split(rollout_key, loop.rollout_steps),
        )
        obs, extras, reward, next_obs, terminated, truncated = record
        rollout = Rollout(
            obs=obs,
            extras=extras,
            reward=reward,
            next_obs=next_obs,
            terminated=terminated.astype(jnp.float32),
            truncated=truncated.astype(jnp.float32),
        )
        agent_state, metrics = agent.update(carry.agent, rollout, update_key)
        return Carry(
            agent_state,
            envs,
            carry.buffer,
            key,
            carry.env_step + loop.num_envs * loop.rollout_steps,
            carry.updates + 1,
            episodes,
            metrics,
        )

    return step


def _evaluate_fn(env: MJXEnv, agent: Any, episodes: int, deterministic: bool):
    """``evaluate(agent_state, key) -> returns [episodes]``: that many episodes from envs reset
    with ``key``, played together to their ends."""

    def evaluate(agent_state: Any, key: jax.Array) -> jax.Array:
        reset_key, act_key = jax.random.split(key)
        envs = jax.vmap(env.reset)(jax.random.split(reset_key, episodes))

        def play(inputs, step_key):
            envs, returns, running = inputs
            action = agent.act(agent_state, envs.obs, step_key, deterministic)
            env_action = env.to_env_action(action)
            envs, _, reward, terminated, truncated = jax.vmap(env.advance)(envs, env_action)
            returns = returns + jnp.where(running, reward, 0.0)
            return (envs, returns, running & ~(terminated | truncated)), None

        start = (envs, jnp.zeros(episodes, jnp.float32), jnp.ones(episodes, bool))
        keys = jax.random.split(act_key, env.max_episode_steps)
        (_, returns, _), _ = jax.lax.scan(play, start, keys)
        return returns

    return evaluate


# --- the compiled programs -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Programs:
    """The compiled functions of one run configuration, for one seed or several (a leading seed
    axis on every carry leaf)."""

    env: MJXEnv
    agent: Any
    seeds: SeedAxis
    start: Callable[..., Carry]  # (agent states, keys) -> carry
    chunk: Callable[[Carry, jax.Array], Carry]  # (carry, steps) -> carry
    evaluate: Callable[[Any, jax.Array], jax.Array]  # one seed: (agent state, key) -> returns
    metric_names: list[str]
    on_policy: bool


def check_run(config: Any) -> None:
    """Refuse, before anything is written, what the device loop cannot train.

    Raises:
        UsageError: a replay buffer smaller than one step of all envs.
    """
    loop = config.loop
    # A host loop on an mjx: env (the Gymnasium adapter; benchmarks/device_loop.py) has no envs
    # to check here.
    if isinstance(loop, DeviceReplayLoopConfig) and loop.buffer_size < loop.num_envs:
        raise UsageError(
            f"buffer_size ({loop.buffer_size}) must hold one step of all num_envs "
            f"({loop.num_envs}) envs"
        )


def _improves_actions(agent: Any) -> bool:
    return getattr(agent, "update_improving_actions", None) is not None


def _over_seeds(fn: Callable[..., Any], batching: str, size: int) -> Callable[..., Any]:
    """``fn(carry, *shared)`` over the leading seed axis of ``carry`` (``shared`` the same for
    every seed)."""
    if size == 1:
        return fn
    if batching == "vmap":
        return lambda carry, *shared: jax.vmap(lambda c: fn(c, *shared))(carry)
    return lambda carry, *shared: jax.lax.map(lambda c: fn(c, *shared), carry)


# Programs by run configuration: MJX compiles for tens of seconds, and runs of one configuration
# in a process (tests, seeds resumed) share them. The agent is a pure function of the key.
_PROGRAMS: dict[Any, Programs] = {}


def programs(setups: Sequence[RunSetup], agent: Any) -> Programs:
    """The compiled programs for ``setups`` (built with ``agent`` the first time)."""
    config = setups[0].config
    loop = config.loop
    key = (config.algo, config.env, config.agent, loop, len(setups), setups[0].seed_batching)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _build(setups, agent)
    return _PROGRAMS[key]


def _build(setups: Sequence[RunSetup], agent: Any) -> Programs:
    config = setups[0].config
    loop = config.loop
    env = make_mjx_env(config.env, action_repeat=loop.action_repeat)
    seeds = SeedAxis(agent, len(setups), setups[0].seed_batching)
    on_policy = hasattr(agent, "collect")
    if on_policy:
        step = _rollout_step(env, agent, loop)
    else:
        check_run(config)
        step = _replay_step(env, agent, loop)
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    fresh = jax.eval_shape(lambda state: _start(env, agent, loop, on_policy, state, None), template)
    metric_names = sorted(fresh.metrics)

    def start(agent_state: Any, key: jax.Array) -> Carry:
        return _start(env, agent, loop, on_policy, agent_state, key)

    def chunk(carry: Carry, steps: jax.Array) -> Carry:
        return jax.lax.fori_loop(0, steps, lambda _, c: step(c), carry)

    evaluate = _evaluate_fn(env, agent, loop.eval_episodes, loop.eval_deterministic)
    size, batching = len(setups), seeds.seed_batching
    over_start = jax.vmap(start) if size > 1 else start
    return Programs(
        env,
        agent,
        seeds,
        jax.jit(over_start),
        jax.jit(_over_seeds(chunk, batching, size)),
        jax.jit(evaluate),
        metric_names,
        on_policy,
    )


def _start(
    env: MJXEnv, agent: Any, loop: Any, on_policy: bool, agent_state: Any, key: jax.Array | None
) -> Carry:
    """A fresh carry for one seed; ``key`` None only for shapes (``jax.eval_shape``)."""
    key = jax.random.PRNGKey(0) if key is None else key
    key, env_key = jax.random.split(key)
    envs = jax.vmap(env.reset)(jax.random.split(env_key, loop.num_envs))
    if on_policy:
        buffer, example = None, None
    else:
        buffer = DeviceBuffer.empty(
            loop.buffer_size, env.obs_dim, env.action_dim, _improves_actions(agent)
        )
        example = zeros_batch(env.obs_dim, env.action_dim, loop.batch_size, loop.updates_per_step)
    if on_policy:
        obs = jnp.zeros((loop.num_envs, env.obs_dim), jnp.float32)
        extras = jax.eval_shape(agent.collect, agent_state, obs, key)[1]
        lead = (loop.rollout_steps, loop.num_envs)
        example = Rollout(
            obs=jnp.zeros((*lead, env.obs_dim)),
            extras=jax.tree.map(
                lambda s: jnp.zeros((loop.rollout_steps, *s.shape), s.dtype), extras
            ),
            reward=jnp.zeros(lead),
            next_obs=jnp.zeros((*lead, env.obs_dim)),
            terminated=jnp.zeros(lead),
            truncated=jnp.zeros(lead),
        )
    shapes = jax.eval_shape(agent.update, agent_state, example, key)[1]
    metrics = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}
    zero = jnp.zeros((), jnp.int32)
    return Carry(agent_state, envs, buffer, key, zero, zero, Episodes.start(loop.num_envs), metrics)


# --- checkpoints ---------------------------------------------------------------------------------


def _named_arrays(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _from_named_arrays(prefix: str, arrays: dict[str, np.ndarray], template: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    values = []
    for path, leaf in leaves:
        name = prefix + jax.tree_util.keystr(path)
        if name not in arrays or arrays[name].shape != leaf.shape:
            raise DamagedCheckpoint(f"its loop state lacks {name} of shape {leaf.shape}")
        values.append(jnp.asarray(arrays[name], leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


def _float_or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


# --- the loop ------------------------------------------------------------------------------------


def run(setups: Sequence[RunSetup], agent: Any) -> list[TrainResult]:
    """Train ``agent`` on the ``mjx:`` env of ``setups`` (one seed, or several in one program)
    and fill their run directories."""
    config = setups[0].config
    loop = config.loop
    compiled = programs(setups, agent)
    agent, seeds, env = compiled.agent, compiled.seeds, compiled.env
    size = len(setups)
    steps_per_step = loop.num_envs * (loop.rollout_steps if compiled.on_policy else 1)
    total_steps = -(-config.steps // steps_per_step) * steps_per_step
    keys, state = seeds.start([setup.config.seed for setup in setups])
    template = seeds.member_shapes(state)

    improves_actions = _improves_actions(agent)
    check = (
        None
        if compiled.on_policy
        else replay_restorer(loop.buffer_size, env.obs_dim, env.action_dim, improves_actions)
    )
    resumes = find_resume_points(setups, template, check) if setups[0].resume else None

    def evaluate(member_state: Any, key: jax.Array) -> Evaluation:
        returns = np.asarray(compiled.evaluate(member_state, key), np.float64)
        return Evaluation(returns, [{} for _ in returns], [])

    recorders = SeedRecorders(
        setups, compiled.metric_names, total_steps, resumes, seeds.member, evaluate
    )
    try:
        carry = compiled.start(state, keys)
        rows_saved = [0] * size
        if resumes is not None:
            loop_part = seeds.member_shapes(carry)._replace(agent=None, buffer=None)
            members = []
            for index, resume in enumerate(resumes):
                restored = _from_named_arrays("carry", resume.arrays, loop_part)
                buffer = None
                if resume.extra is not None:
                    buffer = DeviceBuffer.from_host(resume.extra)
                    discard_rows_after(setups[index].run_dir / runs.REPLAY_DIR, resume.env_step)
                    rows_saved[index] = resume.env_step
                members.append(restored._replace(agent=resume.state, buffer=buffer))
            carry = seeds.stack(members) if size > 1 else members[0]

        def snapshot_of(index: int) -> Snapshot:
            def snapshot() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
                member = seeds.member(carry, index) if size > 1 else carry
                arrays = _named_arrays("carry", member._replace(agent=None, buffer=None))
                if member.buffer is not None:
                    replay_dir = setups[index].run_dir / runs.REPLAY_DIR
                    host = member.buffer.to_host()
                    host.save_rows(replay_dir, rows_saved[index])
                    rows_saved[index] = host.inserted
                    if host.improved_action is not None:
                        host.save_improved_actions(replay_dir)
                info = {"metrics": encode_floats(lane_metrics(member))}
                return arrays, info

            return snapshot

        def lane_metrics(member: Carry) -> dict[str, float]:
            return {name: float(value) for name, value in jax.device_get(member.metrics).items()}

        snapshots = [snapshot_of(index) for index in range(size)]
        env_step = int(_first(carry.env_step))
        seconds_per_step = math.inf  # the first call compiles: one step
        while env_step < total_steps:
            next_eval = (env_step // loop.eval_every + 1) * loop.eval_every
            before_eval = min(-(-next_eval // steps_per_step) * steps_per_step, total_steps)
            count = (before_eval - env_step) // steps_per_step
            count = min(count, max(1, int(CALL_SECONDS / seconds_per_step)))
            target = env_step + count * steps_per_step
            started = time.perf_counter()
            carry = compiled.chunk(carry, jnp.asarray(count, jnp.int32))
            host = jax.device_get((carry.env_step, carry.updates, carry.episodes, carry.metrics))
            seconds_per_step = (time.perf_counter() - started) / count
            members = (
                [jax.tree.map(lambda x, i=i: x[i], host) for i in range(size)]
                if size > 1
                else [host]
            )
            recorders.bar.advance(target - env_step)
            env_step = target
            updates = [int(m[1]) for m in members]
            metrics = [{k: float(v) for k, v in m[3].items()} for m in members]
            recorders.check_updates(env_step, updates, metrics)
            if env_step >= next_eval or env_step == total_steps:
                carry_key, eval_keys = seeds.split(carry.key)
                carry = carry._replace(key=carry_key)
                recorders.evaluation_points(
                    agent,
                    carry.agent,
                    eval_keys,
                    env_step,
                    [_float_or_none(m[2].last) for m in members],
                    updates,
                    metrics,
                    snapshots,
                )
                if not compiled.on_policy:
                    for index in range(size):
                        if recorders.active(index):
                            replay_dir = setups[index].run_dir / runs.REPLAY_DIR
                            oldest_kept = recorders.oldest_kept_step(index)
                            prune_rows(replay_dir, oldest_kept - loop.buffer_size)
                            if improves_actions:
                                prune_improved_actions(replay_dir, oldest_kept)
            recorders.stop_if_requested(carry.agent, env_step, snapshots)
        _, plot_keys = seeds.split(carry.key)
        return recorders.finish(agent, carry.agent, plot_keys, env_step)
    finally:
        recorders.close()


def _first(value: jax.Array) -> jax.Array:
    return value.reshape(-1)[0]

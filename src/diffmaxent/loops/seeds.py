"""Several seeds of one run trained together: an agent's pure functions over a seed axis.

The loops hold per-seed things (envs, replay buffers, recorders) in lists and the agent state,
the JAX keys and the data handed to the agent "packed": with one seed, packing is the identity
and every call is the agent's own jitted function, so a single run computes exactly what it
always did; with ``S > 1`` seeds every array gets a leading seed axis of size ``S`` and each
function is mapped over it and jitted once, so that one compiled call serves all seeds. Seeds
do not interact. Two ways to map (``seed_batching``):

* ``vmap``: ``jax.vmap``, batched kernels. On an accelerator, where one seed's small networks
  leave most of the device idle, this is what makes many seeds cheap.
* ``map``: ``jax.lax.map``, the seeds one after another inside the compiled call, each with
  unbatched kernels. On a CPU, where the update is compute-bound, this is the faster one
  (XLA:CPU's batched matmuls are slower than the same matmuls one by one; docs/benchmarks.md
  measures both).
* ``auto`` (the default): ``map`` on CPU, ``vmap`` on a GPU or TPU.

Either way XLA compiles the update into another program than the single-seed call, so a seed in
a group computes what it would alone up to floating-point rounding (a few ulp per step), not bit
for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SEED_BATCHING = ("auto", "vmap", "map")


def resolve_seed_batching(seed_batching: str) -> str:
    """``vmap`` or ``map`` for ``seed_batching`` on this machine's default JAX backend."""
    if seed_batching not in SEED_BATCHING:
        raise ValueError(f"seed_batching must be one of {SEED_BATCHING}, got {seed_batching!r}")
    if seed_batching == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return seed_batching


class SeedAxis:
    """``agent``'s ``init``, ``act``, ``collect`` (on-policy agents), ``update`` and
    ``update_improving_actions`` (agents that rewrite replay actions) for ``size`` seeds, and the
    packing of per-seed values to and from the seed axis."""

    def __init__(self, agent: Any, size: int, seed_batching: str = "auto") -> None:
        if size < 1:
            raise ValueError(f"a seed axis needs at least one seed, got {size}")
        self.agent = agent
        self.size = size
        self.seed_batching = resolve_seed_batching(seed_batching)
        if size > 1:
            over = jax.vmap if self.seed_batching == "vmap" else _sequential
            self._init = jax.jit(over(agent.init))
            self._split = jax.jit(jax.vmap(jax.random.split))  # integer ops: exact either way
            self._update = jax.jit(over(agent.update))
            self._act = {
                deterministic: jax.jit(over(_fixed(agent.act, deterministic)))
                for deterministic in (False, True)
            }
            collect = getattr(agent, "collect", None)
            self._collect = jax.jit(over(collect)) if collect is not None else None
            improving = getattr(agent, "update_improving_actions", None)
            self._update_improving = jax.jit(over(improving)) if improving is not None else None
            self._member = jax.jit(_take)

    # --- packing ---

    def pack(self, values: Sequence[Any]) -> Any:
        """Per-seed arrays (or pytrees of arrays) -> one value with a leading seed axis."""
        if self.size == 1:
            return values[0]
        return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *values)

    def unpack(self, packed: Any) -> list[Any]:
        """The inverse of :meth:`pack` for host values (numpy arrays or dicts of them)."""
        if self.size == 1:
            return [packed]
        return [jax.tree_util.tree_map(lambda x, i=i: x[i], packed) for i in range(self.size)]

    def stack_steps(self, per_step: Sequence[Any]) -> Any:
        """Packed values of consecutive steps -> ``[S, steps, ...]`` (one seed: ``[steps, ...]``),
        as device arrays."""
        axis = 0 if self.size == 1 else 1
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=axis), *per_step)

    def member(self, state: Any, index: int) -> Any:
        """Seed ``index``'s part of a packed agent state (or key)."""
        if self.size == 1:
            return state
        return self._member(state, index)

    def member_shapes(self, state: Any) -> Any:
        """One seed's part of a packed state without computing it: the state itself for one
        seed, else its shapes and dtypes (a template for checkpoints and tracing)."""
        if self.size == 1:
            return state
        return jax.eval_shape(lambda packed: self.member(packed, 0), state)

    def stack(self, states: Sequence[Any]) -> Any:
        """Per-seed agent states (or keys) -> one packed state on the device."""
        if self.size == 1:
            return states[0]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

    # --- the agent's functions ---

    def start(self, seeds: Sequence[int]) -> tuple[jax.Array, Any]:
        """``(keys, state)`` at the start of training: each seed's key is split off
        ``PRNGKey(seed)`` together with the key its agent state is initialised from."""
        pairs = [jax.random.split(jax.random.PRNGKey(seed)) for seed in seeds]
        if self.size == 1:
            key, init_key = pairs[0]
            return key, self.agent.init(init_key)
        keys = jnp.stack([pair[0] for pair in pairs])
        return keys, self._init(jnp.stack([pair[1] for pair in pairs]))

    def split(self, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(keys to carry on with, keys to use now)``, each seed's own split."""
        if self.size == 1:
            carry, use = jax.random.split(keys)
            return carry, use
        pairs = self._split(keys)
        return pairs[:, 0], pairs[:, 1]

    def act(self, state: Any, obs: Any, keys: jax.Array, deterministic: bool) -> jax.Array:
        """Actions ``[S, B, action_dim]`` for observations ``[S, B, obs_dim]`` (one seed: no
        seed axis)."""
        if self.size == 1:
            return self.agent.act(state, obs, keys, deterministic)
        return self._act[deterministic](state, obs, keys)

    def collect(self, state: Any, obs: Any, keys: jax.Array) -> tuple[jax.Array, Any]:
        """On-policy agents: ``(actions, extras)`` of ``collect`` for every seed."""
        if self.size == 1:
            return self.agent.collect(state, obs, keys)
        return self._collect(state, obs, keys)

    def update(self, state: Any, data: Any, keys: jax.Array) -> tuple[Any, dict[str, Any]]:
        """One ``update`` of every seed on its own packed data; metrics get the seed axis."""
        if self.size == 1:
            return self.agent.update(state, data, keys)
        return self._update(state, data, keys)

    def update_improving_actions(
        self, state: Any, data: Any, improved_action: Any, keys: jax.Array
    ) -> tuple[Any, dict[str, Any], jax.Array]:
        """Agents that improve replayed actions: one ``update_improving_actions`` of every seed on
        its own packed data and improved actions; metrics and returned actions get the seed
        axis."""
        if self.size == 1:
            return self.agent.update_improving_actions(state, data, improved_action, keys)
        return self._update_improving(state, data, improved_action, keys)


def _sequential(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` over the leading axis of all its arguments, one slice after another
    (``lax.map``)."""

    def mapped(*args: Any) -> Any:
        return jax.lax.map(lambda sliced: fn(*sliced), args)

    return mapped


def _take(tree: Any, index: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def _fixed(act: Callable[..., Any], deterministic: bool) -> Callable[..., Any]:
    def act_with(state: Any, obs: Any, key: jax.Array) -> Any:
        return act(state, obs, key, deterministic)

    return act_with

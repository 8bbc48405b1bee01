"""Several seeds of one run trained together: an agent's pure functions over a seed axis.

The loops hold per-seed things (envs, replay buffers, recorders) in lists and the agent state,
the JAX keys and the data handed to the agent "packed": with one seed, packing is the identity
and every call is the agent's own jitted function, so a single run computes exactly what it
always did; with ``S > 1`` seeds every array gets a leading seed axis of size ``S`` and each
function is ``jax.vmap``-ed over it and jitted once, so that one compiled call trains all seeds.
Seeds do not interact: each computes what it would alone, up to floating-point reassociation in
the batched kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class SeedAxis:
    """``agent``'s ``init``, ``act``, ``collect`` (on-policy agents) and ``update`` for ``size``
    seeds, and the packing of per-seed values to and from the seed axis."""

    def __init__(self, agent: Any, size: int) -> None:
        if size < 1:
            raise ValueError(f"a seed axis needs at least one seed, got {size}")
        self.agent = agent
        self.size = size
        if size > 1:
            self._init = jax.jit(jax.vmap(agent.init))
            self._split = jax.jit(jax.vmap(jax.random.split))
            self._update = jax.jit(jax.vmap(agent.update))
            self._act = {
                deterministic: jax.jit(jax.vmap(_fixed(agent.act, deterministic)))
                for deterministic in (False, True)
            }
            collect = getattr(agent, "collect", None)
            self._collect = jax.jit(jax.vmap(collect)) if collect is not None else None

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
        return jax.tree_util.tree_map(lambda x: x[index], state)

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


def _fixed(act: Callable[..., Any], deterministic: bool) -> Callable[..., Any]:
    def act_with(state: Any, obs: Any, key: jax.Array) -> Any:
        return act(state, obs, key, deterministic)

    return act_with

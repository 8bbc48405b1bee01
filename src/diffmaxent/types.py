"""Shared array containers."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Batch(NamedTuple):
    """Transitions, each field with leading shape ``[..., B]``.

    ``terminated`` marks true ends of an episode (no bootstrap); ``truncated`` marks time limits,
    after which the target still bootstraps from ``next_obs``.
    """

    obs: jax.Array  # [..., B, obs_dim]
    action: jax.Array  # [..., B, action_dim], in [-1, 1]
    reward: jax.Array  # [..., B]
    next_obs: jax.Array  # [..., B, obs_dim]
    terminated: jax.Array  # [..., B] float32 in {0, 1}
    truncated: jax.Array  # [..., B] float32 in {0, 1}


Metrics = dict[str, jax.Array]  # scalar metrics of an update, by name

"""Network building blocks shared by all agents."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def mish(x: jax.Array) -> jax.Array:
    """Mish, x * tanh(softplus(x)), written with one exp.

    tanh(log(1 + e^x)) = n / (n + 2) with n = e^x (e^x + 2). The textbook form costs an exp, a log1p
    and a tanh per element, which at the log-probability's 256k x 256 activations was a sixth of a
    paper-preset MaxEntDP update on a CPU. Same values to 2e-6; above 20 mish(x) = x in float32, and
    clamping there keeps n finite (and its gradient free of NaN).
    """
    e = jnp.exp(jnp.minimum(x, 20.0))
    n = e * (e + 2.0)
    return jnp.where(x > 20.0, x, x * n / (n + 2.0))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "mish": mish,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
}

KERNEL_INITS: tuple[str, ...] = ("lecun_normal", "xavier_uniform")


def dense_kernel_init(name: str, fan_in: int | None = None) -> nn.initializers.Initializer:
    """The weight initialiser ``name`` for a Dense kernel ``[fan_in, fan_out]``.

    ``lecun_normal`` is flax's default; ``xavier_uniform`` (U(+-sqrt(6 / (fan_in + fan_out))))
    is what jaxrl5-based code (the official MaxEntDP) uses. ``fan_in``: the fan-in of the whole
    layer when the kernel is one block of a layer written as a sum of blocks (``W_a a + W_s s``):
    xavier then draws each block as the concatenated layer would. Blocks under ``lecun_normal`` keep
    flax's per-block default.
    """
    if name == "lecun_normal":
        return nn.initializers.lecun_normal()
    if name != "xavier_uniform":
        raise ValueError(f"unknown kernel_init {name!r}; expected one of {KERNEL_INITS}")
    if fan_in is None:
        return nn.initializers.xavier_uniform()
    layer_fan_in = fan_in

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        limit = (6.0 / (layer_fan_in + shape[-1])) ** 0.5
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def householder_q(matrix: jax.Array) -> jax.Array:
    """The Q factor of ``matrix [m, n]`` (``m >= n``) with R's diagonal made positive:
    ``[m, n]`` orthonormal columns, unique for a full-rank matrix.

    Householder reflections in plain JAX operations rather than ``jnp.linalg.qr``: XLA:CPU runs
    LAPACK's QR as a custom call that waits on the intra-op thread pool it is itself running
    on, so two such calls at once can hang a 2-core machine for good (jaxlib 0.10.2; it hung
    BRO's initialisation of several seeds)."""
    rows, cols = matrix.shape
    if rows < cols:
        raise ValueError(f"householder_q needs rows >= columns, got shape {matrix.shape}")
    index = jnp.arange(rows)

    def reflect(k, carry):
        reduced, reflectors, diagonal = carry
        column = jnp.where(index >= k, reduced[:, k], 0.0)
        norm = jnp.sqrt(jnp.sum(column**2))
        alpha = -jnp.where(column[k] >= 0, 1.0, -1.0) * norm  # the sign that avoids cancellation
        v = column.at[k].add(-alpha)
        v_norm = jnp.sqrt(jnp.sum(v**2))
        v = v / jnp.where(v_norm > 0, v_norm, 1.0)
        reduced = reduced - 2.0 * jnp.outer(v, v @ reduced)
        return reduced, reflectors.at[k].set(v), diagonal.at[k].set(alpha)

    zeros = (jnp.zeros((cols, rows), matrix.dtype), jnp.zeros((cols,), matrix.dtype))
    _, reflectors, diagonal = jax.lax.fori_loop(0, cols, reflect, (matrix, *zeros))

    def apply(i, q):  # Q = H_0 H_1 ... H_{n-1} I[:, :n], the last reflection applied first
        v = reflectors[cols - 1 - i]
        return q - 2.0 * jnp.outer(v, v @ q)

    q = jax.lax.fori_loop(0, cols, apply, jnp.eye(rows, cols, dtype=matrix.dtype))
    return q * jnp.sign(diagonal)


def orthogonal_init(scale: float) -> nn.initializers.Initializer:
    """Orthogonal weights times ``scale``, drawn as ``jax.nn.initializers.orthogonal`` draws
    them (the Q factor of a Gaussian matrix with R's diagonal positive: Haar-distributed, Mezzadri
    2007; the same Gaussian draw, so the same matrix up to rounding) but with the QR of
    :func:`householder_q`, which cannot hang XLA:CPU's thread pool."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"an orthogonal initialiser needs a 2-D shape or more, got {shape}")
        cols = shape[-1]
        rows = math.prod(shape) // cols
        gaussian = jax.random.normal(key, (max(rows, cols), min(rows, cols)), dtype)
        q = householder_q(gaussian)
        if rows < cols:
            q = q.T
        return jnp.asarray(scale, dtype) * q.reshape(shape)

    return init


class MLP(nn.Module):
    """Dense layers with an activation (and optional LayerNorm) after every hidden layer.

    ``output_dim=None`` leaves the last hidden activation as the output.
    """

    hidden_dims: Sequence[int]
    output_dim: int | None = None
    activation: str = "relu"
    layer_norm: bool = False
    output_scale: float = 1.0  # scales the output layer's initial weights (small = near-zero start)
    kernel_init: str = "lecun_normal"  # hidden layers' weights (the output layer: fan_avg uniform)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_dims:
            x = nn.Dense(width, kernel_init=dense_kernel_init(self.kernel_init))(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        if self.output_dim is not None:
            init = nn.initializers.variance_scaling(self.output_scale**2, "fan_avg", "uniform")
            x = nn.Dense(self.output_dim, kernel_init=init)(x)
        return x


def left_align(x: jax.Array, rank: int, trailing_dims: int) -> jax.Array:
    """Give ``x [*lead_x, *trail]`` exactly ``rank`` leading axes by appending size-1 axes after
    ``lead_x``, so that ``obs [B, obs_dim]`` lines up with ``action [B, K, A]`` (NumPy's rule
    aligns from the right and would not). Nothing is broadcast yet."""
    lead_x = x.ndim - trailing_dims
    if lead_x > rank:
        raise ValueError(f"cannot align shape {x.shape} to {rank} leading axes")
    return x.reshape(x.shape[:lead_x] + (1,) * (rank - lead_x) + x.shape[lead_x:])


class QNetwork(nn.Module):
    """Q(s, a): an MLP on ``[obs, action]``; ``obs [..., obs_dim]`` may have fewer leading axes
    than ``action [..., A]`` (left-aligned: ``obs [B, d]`` with ``action [B, K, A]``). Returns the
    action's leading shape.

    The first layer is written ``W_s s + W_a a``, the same function as a Dense layer on the
    concatenation, with the state term computed once per state before broadcasting: scoring K
    candidate actions per state (QNE, best-of-M) then costs K action projections, not K state
    projections (a large saving for high-dimensional states)."""

    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        obs = left_align(obs, action.ndim - 1, 1)
        width = self.hidden_dims[0]
        first_init = dense_kernel_init(self.kernel_init, obs.shape[-1] + action.shape[-1])
        x = nn.Dense(width, use_bias=False, kernel_init=first_init, name="input_obs")(obs)
        x = x + nn.Dense(width, kernel_init=first_init, name="input_action")(action)
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        x = ACTIVATIONS[self.activation](x)
        return MLP(
            self.hidden_dims[1:], 1, self.activation, self.layer_norm, kernel_init=self.kernel_init
        )(x)[..., 0]


class EnsembleCritic(nn.Module):
    """``num_critics`` independent Q-networks evaluated together; returns ``[num_critics, B]``."""

    hidden_dims: Sequence[int]
    num_critics: int = 2
    activation: str = "relu"
    layer_norm: bool = False
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            QNetwork,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return ensemble(self.hidden_dims, self.activation, self.layer_norm, self.kernel_init)(
            obs, action
        )


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianActor(nn.Module):
    """obs ``[B, obs_dim]`` -> mean and log-std ``[B, A]`` of the pre-tanh Gaussian."""

    hidden_dims: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = MLP(self.hidden_dims)(obs)
        mean = nn.Dense(self.action_dim)(features)
        # Squash log-std smoothly into [LOG_STD_MIN, LOG_STD_MAX] instead of clipping, so the
        # gradient never vanishes at the bounds.
        raw = jnp.tanh(nn.Dense(self.action_dim)(features))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (raw + 1.0)
        return mean, log_std

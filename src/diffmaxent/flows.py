"""State-conditioned normalising flows on actions in the box [-1, 1]^A.

A flow maps a prior sample ``eps ~ N(0, I)`` to an action in three stages, each a layer with a
known log-determinant:

1. ``z = sigma(s) * eps``: an elementwise linear layer whose scale depends on the state only, so
   its log-determinant ``sum log sigma(s)`` does not depend on the action;
2. ``x = couplings(z | s)``: additive coupling layers ``x = z + (1 - m) * t(m * z, s)`` with
   alternating binary masks ``m`` (NICE, Dinh et al. 2015), volume preserving (log-det 0);
3. ``a = tanh(x)``: the squashing into the action box, log-det ``sum log(1 - a^2)``, which
   depends on the action.

The exact log-density of an action is ``log pi(a|s) = action_term(s, a) - state_term(s)`` with

* ``action_term = -|eps|^2 / 2 - sum log(1 - a^2)``: every factor that varies with ``a``,
* ``state_term = sum log sigma(s) + (A / 2) log(2 pi)``: the normaliser, a function of ``s``,

so that ``exp(action_term)`` integrates over actions to ``exp(state_term)``. Energy-based flows
(EBFlow, and MEow on top of it) read ``-action_term`` as an energy and ``state_term`` as its
log-partition function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmaxent.nn import orthogonal_init

# Keeps log(1 - a^2) finite where tanh rounds to +-1 in float32 (float32 machine epsilon).
TANH_LOG_DET_EPS = float(jnp.finfo(jnp.float32).eps)
# Actions are pulled this far inside the box before atanh, so that replayed actions on the
# boundary (uniform warm-up actions, clipped actions) have a finite pre-image.
BOX_MARGIN = 1e-5


def uniform_fan_in_bias(fan_in: int) -> nn.initializers.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, PyTorch's default bias of a linear layer: the
    zero-kernel networks below rely on it, since with zero biases too every hidden unit would be
    zero and no kernel would ever receive a gradient."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class LearnableSwish(nn.Module):
    """``x * sigmoid(beta * x)`` with one learned ``beta`` per unit, starting at 1 (Swish as in
    LSD, Grathwohl et al. 2020)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        beta = self.param("beta", nn.initializers.ones, (x.shape[-1],))
        return x * jax.nn.sigmoid(beta * x)


class FlowMLP(nn.Module):
    """Dense -> [LayerNorm] -> learnable Swish -> [Dropout] per hidden layer, then a linear output.

    ``kernel_init``: ``zeros`` (the network starts as the constant its output bias sets) or
    ``orthogonal``. Biases start as PyTorch's default (:func:`uniform_fan_in_bias`).
    """

    hidden_dims: Sequence[int]
    output_dim: int
    kernel_init: Literal["zeros", "orthogonal"] = "orthogonal"
    layer_norm: bool = False
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x [..., in]`` -> ``[..., output_dim]``; ``train`` turns dropout on (it then needs a
        ``dropout`` rng)."""
        kernel_init = nn.initializers.zeros if self.kernel_init == "zeros" else orthogonal_init(1.0)
        for width in self.hidden_dims:
            x = nn.Dense(
                width, kernel_init=kernel_init, bias_init=uniform_fan_in_bias(x.shape[-1])
            )(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = LearnableSwish()(x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.output_dim, kernel_init=kernel_init, bias_init=uniform_fan_in_bias(x.shape[-1])
        )(x)


class AdditiveCoupling(nn.Module):
    """``x = z + (1 - m) * t(m * z, s)``: the masked coordinates pass unchanged and condition the
    shift of the others, together with the state. Volume preserving: log-det 0 both ways.

    The mask keeps the coordinates ``i`` with ``i % 2 == parity``; layers of parity 0 and 1
    alternate, so that every coordinate is moved by every pair."""

    action_dim: int
    parity: int
    hidden_dims: Sequence[int]
    layer_norm: bool = True
    dropout_rate: float = 0.0

    def setup(self) -> None:
        self.mask = (jnp.arange(self.action_dim) % 2 == self.parity).astype(jnp.float32)
        self.shift_net = FlowMLP(
            self.hidden_dims, self.action_dim, "orthogonal", self.layer_norm, self.dropout_rate
        )

    def shift(self, z: jax.Array, obs: jax.Array, train: bool) -> jax.Array:
        inputs = jnp.concatenate([self.mask * z, obs], -1)
        return (1.0 - self.mask) * self.shift_net(inputs, train)

    def forward(self, z: jax.Array, obs: jax.Array, train: bool = False) -> jax.Array:
        return z + self.shift(z, obs, train)

    def inverse(self, x: jax.Array, obs: jax.Array, train: bool = False) -> jax.Array:
        # The masked coordinates of x equal those of z, so the shift is known from x.
        return x - self.shift(x, obs, train)


def squash(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a = tanh(x)`` and its log-determinant ``sum log(1 - a^2 + eps)``: ``x [..., A]`` ->
    ``([..., A], [...])``."""
    action = jnp.tanh(x)
    return action, jnp.sum(jnp.log(1.0 - action**2 + TANH_LOG_DET_EPS), -1)


def unsquash(action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x = atanh(a)`` (``a`` pulled ``BOX_MARGIN`` inside the box) and the log-determinant of
    the squashing at ``a``, ``sum log(1 - a^2 + eps)``: ``[..., A]`` -> ``([..., A], [...])``."""
    action = jnp.clip(action, -1.0 + BOX_MARGIN, 1.0 - BOX_MARGIN)
    return jnp.arctanh(action), jnp.sum(jnp.log(1.0 - action**2 + TANH_LOG_DET_EPS), -1)


class ConditionalFlow(nn.Module):
    """The three-stage flow of this module's docstring.

    ``log_std(s)`` is a network (kernels initialised by ``log_std_init``; zeros make the prior
    the same for every state at the start) squashed smoothly into
    ``[log_std_min, log_std_max]``; the
    couplings' shift networks see ``[m * z, s]``. Methods (``obs [B, obs_dim]``, ``action
    [B, A]``; ``train`` turns the couplings' dropout on):

    * ``sample(obs, key, train) -> (action [B, A], log_prob [B])``;
    * ``mode(obs) -> action [B, A]``: the prior's mean ``eps = 0`` pushed through the flow;
    * ``log_density_terms(obs, action, train) -> (action_term [B], state_term [B])``;
    * ``state_term(obs) -> [B]``;
    * ``log_prob(obs, action) -> [B]``.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (64, 64)
    num_coupling_pairs: int = 2
    log_std_min: float = -5.0
    log_std_max: float = -0.3
    layer_norm: bool = True
    dropout_rate: float = 0.0
    log_std_init: Literal["zeros", "orthogonal"] = "zeros"

    def setup(self) -> None:
        self.log_std_net = FlowMLP(self.hidden_dims, self.action_dim, self.log_std_init)
        self.couplings = [
            AdditiveCoupling(
                self.action_dim, layer % 2, self.hidden_dims, self.layer_norm, self.dropout_rate
            )
            for layer in range(2 * self.num_coupling_pairs)
        ]

    def log_std(self, obs: jax.Array) -> jax.Array:
        """``[B, obs_dim]`` -> ``[B, A]``, in ``[log_std_min, log_std_max]``."""
        raw = jnp.tanh(self.log_std_net(obs))
        return self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw + 1.0)

    def push_forward(
        self, eps: jax.Array, obs: jax.Array, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """``eps [B, A]`` -> the action and ``log pi(a|s)`` by the change of variables."""
        log_std = self.log_std(obs)
        x = jnp.exp(log_std) * eps
        for coupling in self.couplings:
            x = coupling.forward(x, obs, train)
        action, squash_log_det = squash(x)
        return action, -0.5 * jnp.sum(eps**2, -1) - normaliser(log_std) - squash_log_det

    def sample(
        self, obs: jax.Array, key: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        eps = jax.random.normal(key, (*obs.shape[:-1], self.action_dim), obs.dtype)
        return self.push_forward(eps, obs, train)

    def mode(self, obs: jax.Array) -> jax.Array:
        eps = jnp.zeros((*obs.shape[:-1], self.action_dim), obs.dtype)
        return self.push_forward(eps, obs, False)[0]

    def state_term(self, obs: jax.Array) -> jax.Array:
        """``sum log sigma(s) + (A / 2) log(2 pi)``: the log of ``integral exp(action_term) da``."""
        return normaliser(self.log_std(obs))

    def log_density_terms(
        self, obs: jax.Array, action: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """The action through the inverse flow: ``action_term = -|eps|^2 / 2 - sum log(1 - a^2)``
        (the couplings add nothing) and ``state_term``."""
        x, squash_log_det = unsquash(action)
        for coupling in reversed(self.couplings):
            x = coupling.inverse(x, obs, train)
        log_std = self.log_std(obs)
        eps = x * jnp.exp(-log_std)
        return -0.5 * jnp.sum(eps**2, -1) - squash_log_det, normaliser(log_std)

    def log_prob(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """``log pi(a|s) = action_term - state_term``; ``init`` with this method creates every
        parameter."""
        action_term, state_term = self.log_density_terms(obs, action)
        return action_term - state_term


def normaliser(log_std: jax.Array) -> jax.Array:
    """``log integral exp(-|z / sigma|^2 / 2) dz = sum log sigma + (A / 2) log(2 pi)``:
    ``log_std [..., A]`` -> ``[...]``."""
    return jnp.sum(log_std, -1) + 0.5 * log_std.shape[-1] * math.log(2 * math.pi)

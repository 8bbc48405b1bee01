"""The noise-prediction network ``eps_phi(a_t, lambda, s)`` of the diffusion policy."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmaxent.nn import ACTIVATIONS, MLP, dense_kernel_init, left_align


def broadcast_leading(x: jax.Array, leading: tuple[int, ...], trailing_dims: int) -> jax.Array:
    """Broadcast ``x`` of shape ``[*lead_x, *trail]`` (``len(trail) == trailing_dims``) to
    ``[*leading, *trail]``, matching ``lead_x`` against the **first** axes of ``leading``.

    This is left-aligned broadcasting: ``obs [B, obs_dim]`` fits ``leading = (B, N, T)``, which
    NumPy's right-aligned rule would reject, so callers need not insert singleton axes."""
    x = jnp.asarray(x)
    lead_x = x.shape[: x.ndim - trailing_dims]
    if len(lead_x) > len(leading):
        raise ValueError(f"cannot broadcast leading shape {lead_x} to {leading}")
    trail = x.shape[x.ndim - trailing_dims :]
    x = x.reshape(lead_x + (1,) * (len(leading) - len(lead_x)) + trail)
    return jnp.broadcast_to(x, tuple(leading) + trail)


class FourierFeatures(nn.Module):
    """Learnable Fourier features ``[cos(2 pi x W^T), sin(2 pi x W^T)]`` of ``x [..., 1]``, with
    ``W ~ N(0, init_std^2)`` of ``num_frequencies`` rows; output ``[..., 2 * num_frequencies]``."""

    num_frequencies: int = 32
    init_std: float = 0.2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.normal(self.init_std), (self.num_frequencies, x.shape[-1])
        )
        f = 2.0 * jnp.pi * x @ kernel.T
        return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


class NoiseNet(nn.Module):
    """``eps_phi(a_t, lambda, s)``: predicts the noise in ``a_t`` at log-SNR ``lambda`` given state
    ``s`` (the official MaxEntDP design).

    * time conditioning: Fourier features of ``lambda`` (``2 * num_frequencies`` = 64 dims), then
      Dense ``cond_dims[0]`` -> act -> ... -> Dense ``cond_dims[-1]`` (no activation on the last);
    * main MLP on ``concat[a_t, s, cond]`` with ``hidden_dims`` and ``activation`` (mish), and a
      linear output of ``action_dim``;
    * ``layer_norm``: LayerNorm after every hidden Dense of the main MLP. Without it, the 128-dim
      time conditioning dominates the first layer's pre-activations at initialisation and the net
      starts almost linear in ``a_t``; small-scale training then stalls. The official code has no
      normalisation.

    Shapes: ``noisy_action [..., A]``; ``obs [..., obs_dim]`` and ``log_snr`` (``[...]``, or
    ``[..., 1]`` with the same rank as ``noisy_action``, or a scalar) are broadcast left-aligned to
    the leading axes of ``noisy_action`` (see :func:`broadcast_leading`), so ``obs [B, obs_dim]``
    works with ``noisy_action [B, K, A]`` or ``[B, N, T, A]``. Returns ``eps [..., A]``.

    Cost: the first layer is written as ``W_a a_t + W_s s + W_c cond``, the same function as a
    Dense layer on the concatenation, but each term is computed at its input's own shape before
    broadcasting. Samplers pass one noise level per step (``log_snr`` of shape ``[1, ..., 1]``) and
    the log-probability one per quadrature node (``[1, ..., 1, T]``), so the time conditioning and
    the state projection run once per level / per state instead of once per row: about 45% fewer
    FLOPs than the concatenated form in the log-probability and the samplers.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    cond_dims: Sequence[int] = (128, 128)
    num_frequencies: int = 32
    activation: str = "mish"
    layer_norm: bool = False
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, obs: jax.Array, noisy_action: jax.Array, log_snr: jax.Array) -> jax.Array:
        leading = noisy_action.shape[:-1]
        log_snr = jnp.asarray(log_snr, noisy_action.dtype)
        if log_snr.ndim == noisy_action.ndim:  # the [..., 1] form
            log_snr = log_snr[..., 0]
        log_snr = left_align(log_snr, len(leading), 0)
        obs = left_align(jnp.asarray(obs, noisy_action.dtype), len(leading), 1)

        act = ACTIVATIONS[self.activation]
        features = FourierFeatures(self.num_frequencies)(log_snr[..., None])
        cond = MLP(
            tuple(self.cond_dims[:-1]),
            self.cond_dims[-1],
            self.activation,
            kernel_init=self.kernel_init,
        )(features)
        width = self.hidden_dims[0]
        first_init = dense_kernel_init(
            self.kernel_init, self.action_dim + obs.shape[-1] + self.cond_dims[-1]
        )
        x = (
            nn.Dense(width, kernel_init=first_init, name="input_action")(noisy_action)
            + nn.Dense(width, use_bias=False, kernel_init=first_init, name="input_obs")(obs)
            + nn.Dense(width, use_bias=False, kernel_init=first_init, name="input_time")(cond)
        )
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        x = act(x)
        return MLP(
            tuple(self.hidden_dims[1:]),
            self.action_dim,
            self.activation,
            self.layer_norm,
            kernel_init=self.kernel_init,
        )(x)

"""CrossQ-style critics: Batch Renormalization, no target network, and a categorical head.

CrossQ (Bhatt et al., ICLR 2024) drops the target critic: the current pair ``(s, a)`` and the next
pair ``(s', a')`` go through the critic as **one** batch in training mode, so the normalisation
statistics are shared by both halves and the next-state half (gradient stopped) gives the
bootstrap value. Batch Renormalization (Ioffe, 2017) keeps training- and evaluation-mode outputs
consistent once its running statistics have warmed up.

DIME (Celik et al., ICML 2025) uses that critic with a categorical (C51-style) head of 101 atoms
on ``[v_min, v_max]``, averages the two critics' projected target distributions, and adds a small
entropy bonus on the predicted distributions (``entropy_coef`` = 0.005 in the official code).
:class:`CrossQCritic` bundles the module and its loss; ``head="scalar"`` gives the plain
regression critic of CrossQ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmaxent.errors import UsageError
from diffmaxent.nn import orthogonal_init
from diffmaxent.types import Batch

Head = Literal["distributional", "scalar"]
QReduce = Literal["mean", "min"]
HEADS: tuple[str, ...] = ("distributional", "scalar")
Metrics = dict[str, jax.Array]


def td_target(
    reward: jax.Array, terminated: jax.Array, next_value: jax.Array, gamma: float
) -> jax.Array:
    """``r + gamma * (1 - terminated) * V(s')``: only a true termination stops the bootstrap;
    a time-limit truncation does not (the stored ``next_obs`` is the real next state).

    Every agent's target uses this one function (``agents.common`` re-exports it)."""
    return reward + gamma * (1.0 - terminated) * next_value


class BatchRenorm(nn.Module):
    """Batch Renormalization over all leading axes of ``x [..., features]``.

    Training mode (``train=True``) normalises with the batch statistics and, once
    ``steps >= warmup_steps``, corrects them towards the running statistics:
    ``y = ((x - mu_B) / sigma_B) * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
    ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, both gradient-stopped (Ioffe 2017, Alg. 1).
    While ``r`` and ``d`` are inside their clip ranges the output *value* equals the
    evaluation-mode output ``(x - mu) / sigma``; only the gradient still flows through the batch
    statistics. During the warm-up (``steps < warmup_steps``) it is plain batch normalisation, so
    that the running statistics are reliable before anything depends on them (CrossQ's schedule:
    100k steps). Every training-mode call moves the running mean and variance by
    ``1 - momentum`` towards the batch's and counts one step.

    Evaluation mode (``train=False``) uses the running statistics and changes nothing.

    ``sigma_B = sqrt(var_B + epsilon)`` and ``sigma = sqrt(running_var + epsilon)``. State in the
    ``batch_stats`` collection: ``mean``, ``var`` ``[features]`` and ``steps`` (int32).
    """

    momentum: float = 0.99
    epsilon: float = 1e-3
    warmup_steps: int = 100_000
    r_max: float = 3.0
    d_max: float = 5.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        steps = self.variable("batch_stats", "steps", jnp.zeros, (), jnp.int32)
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))

        running_std = jnp.sqrt(running_var.value + self.epsilon)
        if not train:
            return (x - running_mean.value) / running_std * scale + bias

        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        std = jnp.sqrt(var + self.epsilon)
        normalized = (x - mean) / std
        if not self.is_initializing():
            r = jax.lax.stop_gradient(jnp.clip(std / running_std, 1.0 / self.r_max, self.r_max))
            d = jax.lax.stop_gradient(
                jnp.clip((mean - running_mean.value) / running_std, -self.d_max, self.d_max)
            )
            warmed_up = steps.value >= self.warmup_steps
            normalized = jnp.where(warmed_up, normalized * r + d, normalized)
            running_mean.value = self.momentum * running_mean.value + (1.0 - self.momentum) * (
                jax.lax.stop_gradient(mean)
            )
            running_var.value = self.momentum * running_var.value + (1.0 - self.momentum) * (
                jax.lax.stop_gradient(var)
            )
            steps.value = steps.value + 1
        return normalized * scale + bias


class BRNQNetwork(nn.Module):
    """One CrossQ critic: BatchRenorm on ``[s, a]``, then ``hidden_dims`` x (Dense -> ReLU ->
    BatchRenorm), then a Dense of ``output_dim`` (atoms' logits, or 1 for a scalar value).

    Shapes: ``obs [B, obs_dim]``, ``action [B, A]`` -> ``[B, output_dim]``."""

    hidden_dims: Sequence[int]
    output_dim: int
    train: bool
    momentum: float = 0.99
    warmup_steps: int = 100_000

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        def renorm(x):
            return BatchRenorm(self.momentum, warmup_steps=self.warmup_steps)(x, self.train)

        x = renorm(jnp.concatenate([obs, action], axis=-1))
        for width in self.hidden_dims:
            x = renorm(nn.relu(nn.Dense(width)(x)))
        return nn.Dense(self.output_dim)(x)


class BRNEnsemble(nn.Module):
    """``num_critics`` independent :class:`BRNQNetwork` s (own parameters and statistics).

    ``__call__(obs [B, obs_dim], action [B, A], train) -> [num_critics, B, output_dim]``."""

    hidden_dims: Sequence[int]
    output_dim: int
    num_critics: int = 2
    momentum: float = 0.99
    warmup_steps: int = 100_000

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array, train: bool) -> jax.Array:
        ensemble = nn.vmap(
            BRNQNetwork,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        # `train` is an attribute (static), not a vmapped argument; the submodule keeps the same
        # name in both modes, so both modes share parameters and statistics.
        return ensemble(
            tuple(self.hidden_dims),
            self.output_dim,
            train,
            self.momentum,
            self.warmup_steps,
            name="critics",
        )(obs, action)


def categorical_projection(atoms: jax.Array, probs: jax.Array, support: jax.Array) -> jax.Array:
    """Project a distribution with mass ``probs [..., K]`` at locations ``atoms [..., K]`` onto the
    evenly spaced ``support [K]`` (C51's projection, Bellemare et al. 2017, Alg. 1).

    Each mass is split between its two neighbouring support points in proportion to closeness:
    the weight on support point ``z_j`` is ``max(0, 1 - |clip(atom) - z_j| / delta_z)``. A mass
    exactly on a support point stays there whole (the case C51 implementations patch with their
    ``l == u`` fix); masses outside ``[v_min, v_max]`` go to the nearest end. Returns ``[..., K]``,
    summing to the input mass.
    """
    delta = support[1] - support[0]
    clipped = jnp.clip(atoms, support[0], support[-1])
    weights = jnp.clip(1.0 - jnp.abs(clipped[..., :, None] - support) / delta, 0.0, 1.0)
    return jnp.einsum("...i,...ij->...j", probs, weights)


@dataclasses.dataclass(frozen=True)
class CrossQCritic:
    """The CrossQ critic ensemble with its loss, for any policy that supplies ``(a', cost(s'))``.

    ``cost`` is the policy's (estimate of) ``log pi(a'|s')``: SAC's log-probability for a Gaussian,
    DIME's path cost for a diffusion policy; the soft backup subtracts ``temperature * cost``.
    """

    obs_dim: int
    action_dim: int
    hidden_dims: tuple[int, ...] = (2048, 2048)
    num_critics: int = 2
    head: Head = "distributional"
    num_atoms: int = 101
    v_min: float = -200.0
    v_max: float = 200.0
    entropy_coef: float = 0.005
    q_reduce: QReduce = "mean"
    momentum: float = 0.99
    warmup_steps: int = 100_000

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise UsageError(f"unknown critic head {self.head!r}; expected one of {HEADS}")
        if self.head == "distributional" and not (self.num_atoms >= 2 and self.v_max > self.v_min):
            raise UsageError(
                f"a distributional critic needs num_atoms >= 2 and v_max > v_min, got "
                f"num_atoms={self.num_atoms}, v_min={self.v_min}, v_max={self.v_max}"
            )

    @property
    def module(self) -> BRNEnsemble:
        output_dim = self.num_atoms if self.head == "distributional" else 1
        return BRNEnsemble(
            self.hidden_dims, output_dim, self.num_critics, self.momentum, self.warmup_steps
        )

    @property
    def support(self) -> jax.Array:
        """The atoms' locations ``[num_atoms]``, evenly spaced on ``[v_min, v_max]``."""
        return jnp.linspace(self.v_min, self.v_max, self.num_atoms)

    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """``(params, batch_stats)`` of a fresh ensemble."""
        obs = jnp.zeros((1, self.obs_dim), jnp.float32)
        action = jnp.zeros((1, self.action_dim), jnp.float32)
        variables = self.module.init(key, obs, action, train=False)
        return variables["params"], variables["batch_stats"]

    def _values(self, outputs: jax.Array) -> jax.Array:
        """Head outputs ``[n, B, out]`` -> expected values ``[n, B]``."""
        if self.head == "scalar":
            return outputs[..., 0]
        return jnp.sum(jax.nn.softmax(outputs, axis=-1) * self.support, axis=-1)

    def reduce(self, values: jax.Array) -> jax.Array:
        """Combine the critics' values ``[n, B]`` -> ``[B]`` (mean: DIME; min: clipped double-Q)."""
        return jnp.mean(values, axis=0) if self.q_reduce == "mean" else jnp.min(values, axis=0)

    def q_values(
        self, params: dict, batch_stats: dict, obs: jax.Array, action: jax.Array
    ) -> jax.Array:
        """Every critic's Q ``[num_critics, B]`` in evaluation mode (running statistics), as the
        actor loss uses it."""
        outputs = self.module.apply(
            {"params": params, "batch_stats": batch_stats}, obs, action, train=False
        )
        return self._values(outputs)

    def loss(
        self,
        params: dict,
        batch_stats: dict,
        batch: Batch,
        next_action: jax.Array,
        next_cost: jax.Array,
        temperature: jax.Array,
        gamma: float,
    ) -> tuple[jax.Array, tuple[dict, Metrics]]:
        """The critic loss on one batch, CrossQ style (no target network).

        ``(s, a)`` and ``(s', a')`` are evaluated as one batch of ``2B`` rows in training mode;
        the next-state half, gradient-stopped, gives the soft target
        ``r + gamma (1 - terminated) (Z(s', a') - temperature * cost(s'))``.

        * distributional: each critic's next-state distribution is shifted to those locations and
          projected onto the support (:func:`categorical_projection`); the projections are
          averaged over critics (``q_reduce="mean"``, DIME's code) or taken from the critic with
          the lower expected next value (``"min"``). The loss is the cross-entropy of each
          critic's prediction to that target plus ``entropy_coef * sum p log p`` (a bonus on the
          predicted distribution's entropy), summed over critics;
        * scalar: ``0.5 * sum_j mean_B (Q_j - target)^2`` with the critics' next values combined
          by ``q_reduce``.

        Args:
            batch: fields ``[B, ...]``.
            next_action: ``a' ~ pi(.|s')`` ``[B, A]``.
            next_cost: ``[B]``, the policy's ``log pi(a'|s')`` estimate.
            temperature: the entropy temperature alpha (a scalar).

        Returns:
            ``(loss, (new batch_stats, metrics))``.
        """
        batch_size = batch.obs.shape[0]
        outputs, updates = self.module.apply(
            {"params": params, "batch_stats": batch_stats},
            jnp.concatenate([batch.obs, batch.next_obs], axis=0),
            jnp.concatenate([batch.action, jax.lax.stop_gradient(next_action)], axis=0),
            train=True,
            mutable=["batch_stats"],
        )
        current, following = outputs[:, :batch_size], jax.lax.stop_gradient(outputs[:, batch_size:])
        next_cost = jax.lax.stop_gradient(next_cost)
        current_values = self._values(current)
        next_values = self._values(following)

        if self.head == "scalar":
            next_value = self.reduce(next_values) - temperature * next_cost
            target = td_target(batch.reward, batch.terminated, next_value, gamma)
            loss = 0.5 * jnp.sum(jnp.mean((current_values - target) ** 2, axis=-1))
            extra: Metrics = {}
        else:
            atoms = td_target(
                batch.reward[:, None],
                batch.terminated[:, None],
                self.support - temperature * next_cost[:, None],
                gamma,
            )
            projected = categorical_projection(
                atoms, jax.nn.softmax(following, axis=-1), self.support
            )  # [n, B, K]
            if self.q_reduce == "mean":
                target = jnp.mean(projected, axis=0)
            else:
                lowest = jnp.argmin(next_values, axis=0)  # [B]
                target = jnp.take_along_axis(projected, lowest[None, :, None], axis=0)[0]
            log_probs = jax.nn.log_softmax(current, axis=-1)
            cross_entropy = -jnp.sum(target * log_probs, axis=-1)  # [n, B]
            neg_entropy = jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
            loss = jnp.sum(jnp.mean(cross_entropy + self.entropy_coef * neg_entropy, axis=-1))
            extra = {"critic_distribution_entropy": -jnp.mean(neg_entropy)}
        metrics = {
            "critic_loss": loss,
            "q_mean": jnp.mean(current_values),
            "next_q_mean": jnp.mean(next_values),
            **extra,
        }
        return loss, (updates["batch_stats"], metrics)


# --- BroNet and the quantile critic (BRO, Nauman et al. 2024) ------------------------------------


# The BRO code's initialiser for every Dense layer of its networks: orthogonal, gain sqrt(2).
BRO_KERNEL_INIT = orthogonal_init(2.0**0.5)


class BroResidualBlock(nn.Module):
    """One BroNet block: ``x + LN(W_2 relu(LN(W_1 x + b_1)) + b_2)``.

    LayerNorm sits after each Dense layer, inside the residual branch, and nothing normalises the
    sum (Nauman et al. 2024, Fig. 4), so the residual stream keeps its scale. ``x [..., width]``
    -> ``[..., width]``; ``inner_dim`` is the branch's hidden width."""

    width: int
    inner_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch = nn.LayerNorm()(nn.Dense(self.inner_dim, kernel_init=BRO_KERNEL_INIT)(x))
        branch = nn.relu(branch)
        branch = nn.LayerNorm()(nn.Dense(self.width, kernel_init=BRO_KERNEL_INIT)(branch))
        return x + branch


class BroNet(nn.Module):
    """BroNet: ``relu(LN(Dense(width)(x)))``, then one :class:`BroResidualBlock` per further
    entry of ``hidden_dims = (width, inner_1, ..., inner_k)``, then a Dense of ``output_dim``
    (none when ``output_dim`` is None). The published critic is ``(512, 512, 512)`` (two blocks),
    the actor ``(256, 256)`` (one block).

    ``x [..., in_dim]`` -> ``[..., output_dim]`` (or ``[..., width]``)."""

    hidden_dims: Sequence[int]
    output_dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width, *inner_dims = self.hidden_dims
        x = nn.relu(nn.LayerNorm()(nn.Dense(width, kernel_init=BRO_KERNEL_INIT)(x)))
        for inner_dim in inner_dims:
            x = BroResidualBlock(width, inner_dim)(x)
        if self.output_dim is not None:
            x = nn.Dense(self.output_dim, kernel_init=BRO_KERNEL_INIT)(x)
        return x


class BroCriticEnsemble(nn.Module):
    """``num_critics`` independent BroNets on ``[s, a]``, each with ``num_outputs`` outputs (the
    quantiles, or 1 for a scalar critic): ``obs [B, obs_dim]``, ``action [B, A]`` ->
    ``[num_critics, B, num_outputs]``."""

    hidden_dims: Sequence[int]
    num_outputs: int
    num_critics: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            BroNet,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        inputs = jnp.concatenate([obs, action], axis=-1)
        return ensemble(tuple(self.hidden_dims), self.num_outputs)(inputs)


def quantile_midpoints(num_quantiles: int) -> jax.Array:
    """The quantile levels ``tau_i = (2i - 1) / (2N)``, i = 1..N, that N quantile outputs estimate
    (QR-DQN, Dabney et al. 2018): ``[N]``."""
    return (jnp.arange(num_quantiles, dtype=jnp.float32) + 0.5) / num_quantiles


def quantile_huber_loss(
    predicted: jax.Array, target: jax.Array, taus: jax.Array, kappa: float = 1.0
) -> jax.Array:
    """The quantile Huber loss of QR-DQN (Dabney et al. 2018, eq. 10) per sample.

    With ``u_ij = target_j - predicted_i`` and the Huber loss ``L_kappa``:
    ``sum_i mean_j |tau_i - 1{u_ij < 0}| L_kappa(u_ij) / kappa``.

    Args:
        predicted: ``[..., N]`` quantile estimates at levels ``taus [N]``.
        target: ``[..., M]`` samples of the target distribution (gradient not stopped here).

    Returns:
        ``[...]``.
    """
    td = target[..., None, :] - predicted[..., :, None]  # [..., N, M]
    abs_td = jnp.abs(td)
    huber = jnp.where(abs_td <= kappa, 0.5 * td**2, kappa * (abs_td - 0.5 * kappa))
    weight = jnp.abs(taus[:, None] - (td < 0).astype(td.dtype))
    return jnp.sum(jnp.mean(weight * huber / kappa, axis=-1), axis=-1)

"""Hyperparameter groups that agent configs are composed of, each with the builders it owns.

An agent's config is a frozen dataclass that inherits the groups it uses (and declares only what
is its own), so its fields stay one flat namespace: ``--set NAME=VALUE``, ``diffmaxent presets``
and ``config.json`` see every field by name. A name means the same thing in every agent; where an
agent's published default differs from a group's, it composes
``with_defaults(Group, name=value)``. Dataclasses order inherited fields from the last base to
the first, so agent configs list their groups from the most specific to ``Discount``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import optax

from diffmaxent.config import AUTO, hp, with_defaults
from diffmaxent.critics import CrossQCritic
from diffmaxent.diffusion.augmented import DenoisingPolicy
from diffmaxent.nn import EnsembleCritic

group = dataclasses.dataclass(frozen=True, kw_only=True)


# The sampling scale of MuJoCo Playground's tuned Brax SAC for its DeepMind Control tasks
# (brax_sac_config): 128 envs, batches of 512, 8 gradient steps per step of all envs (one per 16
# env steps), 4M replay rows, 8,192 random steps. The off-policy agents' `mjx` presets (the device
# loop) start from it; evaluation every 100,000 env steps.
MJX_THROUGHPUT: dict[str, int] = {
    "num_envs": 128,
    "batch_size": 512,
    "updates_per_step": 8,
    "buffer_size": 4_194_304,
    "learning_starts": 8_192,
    "eval_every": 100_000,
}


@group
class Discount:
    gamma: float = hp(0.99, "discount factor (per env transition)", low=0.0, high=1.0)


@group
class Optimisers:
    """Adam for the policy network and the critics."""

    actor_lr: float = hp(3e-4, "policy network Adam learning rate", low=0.0, low_open=True)
    critic_lr: float = hp(3e-4, "critic (Q or value) Adam learning rate", low=0.0, low_open=True)

    def actor_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.actor_lr)

    def critic_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.critic_lr)


@group
class ClippedOptimisers(Optimisers):
    """Adam with a chosen epsilon after a global-norm gradient clip, for actor and critics (the
    DIPO and QVPO codes' optimiser)."""

    adam_eps: float = hp(1e-8, "Adam epsilon of actor and critics", low=0.0, low_open=True)
    grad_clip_norm: float = hp(
        2.0, "global-norm clip of actor and critic gradients (0 = off)", low=0.0
    )

    def _clipped_adam(self, lr: float) -> optax.GradientTransformation:
        adam = optax.adam(lr, eps=self.adam_eps)
        if self.grad_clip_norm > 0:
            return optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), adam)
        return adam

    def actor_optimizer(self) -> optax.GradientTransformation:
        return self._clipped_adam(self.actor_lr)

    def critic_optimizer(self) -> optax.GradientTransformation:
        return self._clipped_adam(self.critic_lr)


@group
class CrossQOptimisers(Optimisers):
    """CrossQ's Adam with a lower first-moment decay, for actor and critic."""

    adam_b1: float = hp(0.5, "Adam beta1 of actor and critic (CrossQ's 0.5)", low=0.0, high=1.0)

    def actor_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.actor_lr, b1=self.adam_b1)

    def critic_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.critic_lr, b1=self.adam_b1)


@group
class Temperature:
    """The entropy temperature (SAC's alpha, MaxEntDP's beta), fixed or learned in log space."""

    temperature: float | Literal["auto"] = hp(
        AUTO, "entropy temperature: a number, or auto to tune it", low=0.0, low_open=True
    )
    init_temperature: float = hp(
        1.0, "initial temperature when temperature=auto", low=0.0, low_open=True
    )
    temperature_lr: float = hp(
        3e-4, "temperature Adam learning rate (auto)", low=0.0, low_open=True
    )

    @property
    def learns_temperature(self) -> bool:
        return self.temperature == AUTO

    def initial_log_temperature(self) -> jax.Array:
        """Learnable log-temperature for ``auto``; the fixed value's log otherwise."""
        value = self.init_temperature if self.learns_temperature else float(self.temperature)
        return jnp.log(jnp.asarray(value, dtype=jnp.float32))

    def temperature_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.temperature_lr)


@group
class TargetEntropy:
    """What ``temperature=auto`` tunes towards; ``auto`` is ``AUTO_ENTROPY_PER_DIM * |A|``."""

    AUTO_ENTROPY_PER_DIM: ClassVar[float] = -1.0

    target_entropy: float | Literal["auto"] = hp(
        AUTO,
        "entropy target of temperature=auto; auto: the algorithm's nats per action dimension "
        "times |A| (-|A| for SAC, -|A|/2 for BRO, -0.9|A| for DACER, -3|A| on the augmented MDP)",
    )

    def target_entropy_value(self, action_dim: int) -> float:
        if self.target_entropy == AUTO:
            return self.AUTO_ENTROPY_PER_DIM * action_dim
        return float(self.target_entropy)


@group
class ChainTargetEntropy(TargetEntropy):
    """The DA-MDP code's target for a denoising chain's entropy estimate ``-sum_j l_j`` (relative
    to the prior's entropy): 3 nats per action dimension below the prior."""

    AUTO_ENTROPY_PER_DIM: ClassVar[float] = -3.0


@group
class ActorNetwork:
    actor_hidden_dims: tuple[int, ...] = hp(
        (256, 256), "hidden widths of the policy network", low=1
    )


@group
class CriticNetwork:
    critic_hidden_dims: tuple[int, ...] = hp(
        (256, 256), "hidden widths of each critic (Q or value network)", low=1
    )


@group
class CriticEnsemble(CriticNetwork):
    num_critics: int = hp(2, "critics in the ensemble", low=1)


@group
class TargetCritics(CriticEnsemble):
    """An ensemble of Q-networks (min over them) with Polyak-averaged target copies."""

    tau: float = hp(0.005, "Polyak step of the target critics", low=0.0, high=1.0)

    def critic(self) -> EnsembleCritic:
        return EnsembleCritic(self.critic_hidden_dims, self.num_critics)


@group
class CrossQCriticSettings(with_defaults(CriticEnsemble, critic_hidden_dims=(2048, 2048))):
    """DIME's CrossQ critic: BatchRenorm, no target network, categorical or scalar head."""

    critic_type: Literal["distributional", "scalar"] = hp(
        "distributional", "categorical critic (DIME) or scalar regression (CrossQ)"
    )
    num_atoms: int = hp(101, "atoms of the categorical critic", low=2)
    v_min: float = hp(-200.0, "lowest atom of the categorical critic")
    v_max: float = hp(200.0, "highest atom of the categorical critic")
    critic_entropy_coef: float = hp(0.005, "bonus on the critic distributions' entropy", low=0.0)
    q_reduce: Literal["mean", "min"] = hp("mean", "combine critics: mean (DIME) or min (CrossQ)")
    bn_momentum: float = hp(0.99, "BatchRenorm running-statistics momentum", low=0.0, high=1.0)
    bn_warmup: int = hp(100_000, "critic steps of plain BatchNorm before renorm", low=0)
    policy_delay: int = hp(3, "critic steps per actor step", low=1)

    def critic(self, obs_dim: int, action_dim: int) -> CrossQCritic:
        return CrossQCritic(
            obs_dim,
            action_dim,
            hidden_dims=self.critic_hidden_dims,
            num_critics=self.num_critics,
            head=self.critic_type,
            num_atoms=self.num_atoms,
            v_min=self.v_min,
            v_max=self.v_max,
            entropy_coef=self.critic_entropy_coef,
            q_reduce=self.q_reduce,
            momentum=self.bn_momentum,
            warmup_steps=self.bn_warmup,
        )


@group
class DiffusionChain(ActorNetwork):
    """A policy that produces each action by a chain of denoising steps."""

    num_diffusion_steps: int = hp(20, "denoising (sampler) steps per action", low=1)


@group
class PriorChain(DiffusionChain):
    """A chain that starts from a fixed Gaussian prior (DIME, DMERL)."""

    prior_std: float = hp(2.5, "std of the chain's Gaussian prior x_0", low=0.0, low_open=True)


@group
class DenoisingChain(PriorChain):
    """DMERL's K Gaussian denoising kernels with fixed step sizes, and the augmented MDP's
    discount between denoising steps."""

    denoising_gamma: float = hp(1.0, "discount between denoising steps", low=0.0, high=1.0)
    step_size: float = hp(0.125, "largest step size eta (dt / friction)", low=0.0, low_open=True)
    min_step_fraction: float = hp(0.05, "last step size over the first", low=0.0, low_open=True)
    step_schedule: Literal["linear", "cosine"] = hp("linear", "shape of the step sizes")
    control: Literal["drift", "noise"] = hp(
        "drift", "network output is the drift f (DIME) or the mean's move in noise stds"
    )

    def denoising_policy(self, action_dim: int) -> DenoisingPolicy:
        return DenoisingPolicy(
            action_dim,
            self.num_diffusion_steps,
            self.actor_hidden_dims,
            self.prior_std,
            self.step_size,
            self.min_step_fraction,
            self.step_schedule,
            control=self.control,
        )


@group
class PPOCore:
    """PPO's clipped surrogate, GAE, minibatch epochs and the usual implementation choices."""

    gae_lambda: float = hp(0.95, "GAE lambda (per env transition)", low=0.0, high=1.0)
    clip: float = hp(0.2, "PPO ratio clip epsilon", low=0.0, low_open=True)
    epochs: int = hp(10, "passes over each rollout", low=1)
    batch_size: int = hp(64, "transitions per gradient step", low=1)
    max_grad_norm: float = hp(0.5, "global gradient-norm clip", low=0.0, low_open=True)
    reward_scale: float = hp(1.0, "multiplies env rewards", low=0.0, low_open=True)
    normalize_obs: bool = hp(True, "running mean/std observation normalisation")

    def clip_gradients(self, optimizer: optax.GradientTransformation):
        """``optimizer`` after a global-norm clip of the gradients."""
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), optimizer)

"""DiffWPO: Wasserstein policy optimisation on the diffusion-augmented MDP (DMERL, Sanokowski,
Patil, Knoll, arXiv:2512.02019; "DA-MDP: WPO" in its later version).

Critics, replay, temperature and sampler are DiffSAC's (:mod:`diffmaxent.agents.diffsac`, items
A1, A2, A4): a twin ``Q(s, a)`` at the env transition and a twin diffusion value function
``U(s, x_m, m)`` over denoising levels, bootstrapped with the log-ratio correction. Only the
policy improvement differs. For each denoising kernel ``p_gen(x_{j+1} | x_j, s, j)`` and a latent
``x = x_{j+1}`` sampled by the current chain (held fixed), with ``l_j(x) = log p_gen(x | x_j) -
log p_ref(x_j | x)`` and the soft value ``U(s, x, j+1) - alpha l_j(x)``:

* (W1) WPO step (Pfau et al., ICML 2025, the update ``E[grad_theta grad_x log pi .
  grad_x Q]``) on the soft value: minimise the surrogate
  ``sum_d stopgrad(alpha grad_x l_j(x) - grad_x U(s, x, j+1))_d (grad_x l_j(x))_d``, whose
  ``theta``-gradient is ``E[grad_theta grad_x l_j . grad_x(alpha l_j - U)]`` (the DA-MDP code's
  actor surrogate). For a Gaussian kernel with fixed std ``sigma_j``,
  ``grad_theta grad_x l_j = grad_theta mu_theta / sigma_j^2``; ``precondition=True`` (default)
  multiplies kernel ``j``'s term by ``sigma_j^2``, the inverse Fisher of its mean (WPO's exact
  form), so every kernel moves its mean at the same rate. The code's released config turns its
  diagonal Fisher preconditioning off (``precondition=False``).
* (W2) KL trust region: ``KL_j = ||mu_ref - mu_theta||^2 / (2 sigma_j^2)`` between a reference
  actor and the current one, ``K`` times its mean over kernels (the code's per-step KL times K),
  added with a multiplier ``lambda`` learned by dual descent on ``log lambda (kl_bound - KL)``
  (MPO/WPO's Lagrangian). WPO's reference is the previous policy; off-policy, it is a Polyak
  average of the actor (``actor_tau``).

Off-policy with replay, as in WPO's own (Acme) implementation; the DA-MDP code instead runs WPO
on REPPO's on-policy collection with thousands of parallel GPU envs, which a 2-core CPU cannot
use (documented in docs/benchmarks.md, section DMERL). The ``official`` preset adds the DA-MDP WPO
run's other settings that exist here; its note lists what does not. Evaluation samples the chain,
as DiffSAC's and the DA-MDP code's.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from diffmaxent.agents.common import Agent, polyak_update
from diffmaxent.agents.diffsac import (
    CPU_PRESET,
    Context,
    DiffSACConfig,
    PolicyImprovement,
    build,
)
from diffmaxent.config import Preset, hp
from diffmaxent.envs.spec import EnvSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffWPOConfig(DiffSACConfig):
    """DiffSAC's settings plus the WPO step's (trust region from the DA-MDP WPO config)."""

    kl_bound: float = hp(0.02, "KL trust region per env step (sum over kernels)", low=0.0)
    dual_lr: float = hp(6e-4, "Adam learning rate of log lambda", low=0.0, low_open=True)
    init_kl_multiplier: float = hp(1.0, "initial lambda", low=0.0, low_open=True)
    actor_tau: float = hp(0.005, "Polyak step of the target (reference) actor", low=0.0, high=1.0)
    precondition: bool = hp(True, "scale each kernel's step by sigma_j^2 (inverse Fisher)")


def wpo_surrogate(
    grad_log_ratio: jax.Array, grad_q: jax.Array, alpha: jax.Array, weight: jax.Array | float
) -> jax.Array:
    """(W1): ``mean sum_d weight stopgrad(alpha grad_x l - grad_x U)_d (grad_x l)_d``.

    Only ``grad_log_ratio`` carries the actor's gradient, so the ``theta``-gradient is
    ``weight grad_theta grad_x l . (alpha grad_x l - grad_x U)``, WPO's update on the soft value
    (not half the gradient of a square).

    Args:
        grad_log_ratio: ``[..., A]`` ``grad_x l_j(x)`` at the sampled ``x = x_{j+1}``;
        grad_q: ``[..., A]`` ``grad_x U(s, x, j+1)`` (no gradient to the actor);
        weight: broadcastable to ``[..., A]``, ``sigma_j^2`` (inverse Fisher) or 1.
    """
    direction = jax.lax.stop_gradient(alpha * grad_log_ratio - grad_q)
    return jnp.mean(jnp.sum(weight * direction * grad_log_ratio, axis=-1))


def trust_region_kl(
    reference_mean: jax.Array, mean: jax.Array, std: jax.Array, num_steps: int
) -> jax.Array:
    """(W2): ``K mean_j ||mu_ref - mu_theta||^2 / (2 sigma_j^2)``, the KL from the reference
    actor's Gaussian kernels to the current ones (same std), summed over the ``K`` kernels of
    one env step. ``reference_mean``, ``mean``: ``[..., A]``; ``std`` broadcastable."""
    kl_per_kernel = jnp.sum(
        (jax.lax.stop_gradient(reference_mean) - mean) ** 2 / (2.0 * std**2), axis=-1
    )
    return num_steps * jnp.mean(kl_per_kernel)


def dual_step(
    log_multiplier: jax.Array,
    dual_opt_state: optax.OptState,
    kl: jax.Array,
    kl_bound: float,
    dual_optimizer: optax.GradientTransformation,
) -> tuple[jax.Array, optax.OptState]:
    """(W2)'s dual descent on ``log lambda (kl_bound - KL)``: its gradient ``kl_bound - KL`` is
    negative while the KL exceeds its bound, so ``lambda`` rises then and falls otherwise."""
    grad = kl_bound - jax.lax.stop_gradient(kl)
    updates, dual_opt_state = dual_optimizer.update(grad, dual_opt_state)
    return optax.apply_updates(log_multiplier, updates), dual_opt_state


def wpo_improvement(config: DiffWPOConfig):
    """(W1) and (W2) as a policy-improvement rule for :func:`diffsac.build`."""
    dual_optimizer = optax.adam(config.dual_lr)

    def factory(context: Context) -> PolicyImprovement:
        policy, num_steps = context.policy, context.num_steps

        def init(actor_params: dict) -> dict:
            log_multiplier = jnp.asarray(math.log(config.init_kl_multiplier), jnp.float32)
            return {
                "reference_actor": actor_params,
                "log_kl_multiplier": log_multiplier,
                "dual_opt_state": dual_optimizer.init(log_multiplier),
            }

        def loss(actor_params, aux, critic_params, alpha, obs, chain, key):
            del key
            latent = jax.lax.stop_gradient(chain.latents[:-1])  # x_j, [K, B, A]
            x_next = jax.lax.stop_gradient(chain.latents[1:])  # x_{j+1}, [K, B, A]
            level = jnp.broadcast_to(jnp.arange(num_steps)[:, None], latent.shape[:-1])

            def total_q(x):
                return jnp.sum(context.soft_q(critic_params, obs, x, 1))

            def total_log_ratio(params, x):
                log_gen, log_ref = policy.log_densities(params, obs, latent, level, x)
                return jnp.sum(log_gen - log_ref)

            grad_q = jax.lax.stop_gradient(jax.grad(total_q)(x_next))
            grad_l = jax.grad(total_log_ratio, argnums=1)(actor_params, x_next)
            mean, std = policy.kernel(actor_params, obs, latent, level)
            weight = jax.lax.stop_gradient(std**2) if config.precondition else 1.0
            surrogate = wpo_surrogate(grad_l, grad_q, alpha, weight)

            reference_mean, _ = policy.kernel(aux["reference_actor"], obs, latent, level)
            kl = trust_region_kl(reference_mean, mean, std, num_steps)
            multiplier = jnp.exp(aux["log_kl_multiplier"])
            loss = surrogate + multiplier * kl
            metrics = {
                "actor_loss": surrogate,
                "kl": kl,
                "kl_multiplier": multiplier,
                "grad_q_norm": jnp.mean(jnp.linalg.norm(grad_q, axis=-1)),
            }
            return loss, metrics

        def step(aux: dict, actor_params: dict, metrics) -> dict:
            log_multiplier, dual_opt_state = dual_step(
                aux["log_kl_multiplier"],
                aux["dual_opt_state"],
                metrics["kl"],
                config.kl_bound,
                dual_optimizer,
            )
            return {
                "reference_actor": polyak_update(
                    aux["reference_actor"], actor_params, config.actor_tau
                ),
                "log_kl_multiplier": log_multiplier,
                "dual_opt_state": dual_opt_state,
            }

        return PolicyImprovement(init=init, loss=loss, step=step)

    return factory


def make(config: DiffWPOConfig, spec: EnvSpec) -> Agent:
    """Build DiffWPO's pure ``init`` / ``act`` / ``update`` for one env."""
    return build(config, spec, wpo_improvement(config))


# The DA-MDP WPO run (config/experiment_overrides/DA_MDP_WPO/*linear_schedule.yaml), CPU-sized.
PAPER = {
    "num_diffusion_steps": 8,
    "prior_std": 3.0,
    "step_size": 0.5,
    "min_step_fraction": 0.17,
    "actor_lr": 1e-3,
    "critic_lr": 1e-3,
    "learning_starts": 10_000,
    "eval_deterministic": False,
}

PRESETS = {
    "paper": Preset(
        PAPER,
        "DA-MDP WPO (it runs DeepMind Control on MJX): K = 8, prior std 3, linear steps down to "
        "0.17 with dt 0.125 / friction 0.25, KL bound 0.02, dual lr 6e-4, lr 1e-3, sampled "
        "actions in evaluation; replay and critics as DiffSAC's paper preset.",
        suite="dmc",
    ),
    "official": Preset(
        {
            **PAPER,
            "init_kl_multiplier": 0.3,
            "precondition": False,
            "init_temperature": 0.01,
            "temperature_lr": 6e-4,
            "gamma": 0.999,
            "denoising_gamma": 0.999,
        },
        "paper plus the rest of the DA-MDP WPO run's settings that exist here: "
        "init_kl_multiplier 0.3 (kl_start), precondition off (remove_fisher_precond), "
        "init_temperature 0.01 (ent_start), temperature_lr 6e-4, gamma and denoising_gamma "
        "0.999 (one discount per augmented step). Not reproduced: on-policy collection from "
        "1024 envs with TD(lambda) targets, a categorical HL-Gauss critic on every augmented "
        "state with auxiliary losses, learned step sizes, the KL term only while above its "
        "bound, the entropy target 8 |A| below the prior.",
        suite="dmc",
    ),
    "cpu": CPU_PRESET,
}

"""DIPO: a diffusion policy trained by behaviour cloning on gradient-improved replay actions.

Yang et al., "Policy Representation via Diffusion Probability Model for Reinforcement Learning"
(2023), arXiv:2305.13122, Algorithm 3 ("DIPO"). One gradient step on a replay batch:

* critic: twin Q-networks regress ``r + gamma min_i Q'_i(s', a')`` with ``a' ~ pi'(.|s')`` drawn
  from the target policy (the diffusion chain with Polyak-averaged parameters); no entropy term;
* action gradient: each sampled action is moved uphill on the updated critic,
  ``a <- a + eta grad_a min_i Q_i(s, a)``, ``action_gradient_steps`` times, clipped to the action
  box after every step; the improved actions are written back into the replay buffer at the rows
  sampled (``Agent.update_improving_actions``; the buffer keeps the taken action for the critic and
  the improved one for the policy, as the code keeps two memories), so improvements accumulate
  over the many times a transition is replayed;
* policy: the diffusion model's denoising loss on the improved actions,
  ``E ||eps - eps_phi(alpha a + sigma eps, lambda, s)||^2`` (behaviour cloning of the improved
  actions);
* Polyak averaging of the target critics and the target policy.

Actions are sampled with the reverse diffusion chain (``sampler``, the code's stochastic DDPM by
default) and clipped to [-1, 1].

Paper vs official code (``BellmanTimeHut/DIPO``; the default is the paper's, the code's behaviour an
option; where the paper is silent the default is the code's):

* action update: the paper's gradient ascent ``a <- a + eta grad_a Q``
  (``action_optimizer=sgd``); the code runs Adam on the actions, a fresh Adam per update with
  ``eps=1e-5`` (``action_optimizer=adam``). Both use eta = 0.03, 20 steps, and the code's clip of
  the global norm of the whole batch's action gradient at ``action_grad_norm_ratio * |A|`` (0.1;
  0 = off) before each step, and clamp the actions to [-1, 1] after it;
* the batch the actions are improved on: the code samples it from its second ("diffusion")
  memory independently of the critic's batch; here the critic's sampled rows are improved, so one
  index draw serves both (the same distribution of rows);
* networks (README table: 2 hidden layers; code: 3): the code's noise network and critics have
  three mish layers of 256 units, the defaults here; its noise network embeds the step index with
  sinusoidal features (32) and an MLP, ours the log-SNR with Fourier features (the shared
  ``NoiseNet``); its truncated-normal kernel init is not reproduced (flax's lecun-normal);
* diffusion: the code's discrete cosine beta schedule (s = 0.008, betas clipped at 0.999) with
  100 steps is the continuous cosine schedule of the shared core (the same abar(t)) sampled on a
  100-step grid; ancestral DDPM sampling with x0 clipped to [-1, 1], as in the code (its
  other schedules, ``linear`` and ``vp``, are not used by its run script);
* evaluation: the code runs its DDPM chain without the per-step noise (``noise_ratio=0``); here
  ``deterministic=True`` samples the deterministic probability-flow chain (``eval_sampler=ddim``);
* gradient-norm clipping of actor and critic gradients at 2 (``grad_clip_norm``; 0 = off) and the
  target policy's Polyak step every update (``actor_target_every=1``) as in the code; Adam with
  ``eps=1e-5`` in the code (``adam_eps``; default optax's 1e-8);
* the code treats a time-limit end as terminal in its target; here only a true termination stops
  the bootstrap, as for every agent of the library.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from diffmaxent import diffusion
from diffmaxent.agents.common import (
    Agent,
    TargetPolicyState,
    apply_gradients,
    init_target_policy_state,
    polyak_update,
)
from diffmaxent.agents.groups import (
    ClippedOptimisers,
    DiffusionChain,
    Discount,
    TargetCritics,
)
from diffmaxent.config import Preset, hp, with_defaults
from diffmaxent.critics import td_target
from diffmaxent.diffusion import NoiseNet
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.types import Batch, Metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class DIPOConfig(
    with_defaults(DiffusionChain, num_diffusion_steps=100, actor_hidden_dims=(256, 256, 256)),
    with_defaults(TargetCritics, critic_hidden_dims=(256, 256, 256)),
    ClippedOptimisers,
    Discount,
):
    """DIPO hyperparameters; defaults are the paper's (README table) and, where it is silent, the
    official code's."""

    action_lr: float = hp(0.03, "eta: step size of the action gradient", low=0.0, low_open=True)
    action_gradient_steps: int = hp(20, "action gradient steps per update", low=1)
    action_optimizer: Literal["sgd", "adam"] = hp(
        "sgd", "action update: sgd = a + eta grad Q (paper), adam = Adam on actions (code)"
    )
    action_grad_norm_ratio: float = hp(
        0.1, "clip the batch's action-gradient norm at this times |A| (0 = off)", low=0.0
    )
    actor_tau: float = hp(0.005, "Polyak step of the target (reference) actor", low=0.0, high=1.0)
    actor_target_every: int = hp(1, "updates per Polyak step of the target policy", low=1)
    sampler: Literal["ddpm", "ddim", "dpm_solver_2m"] = hp(
        "ddpm", "sampler: ddim (probability-flow ODE), ddpm (stochastic, x0 clipped), dpm_solver_2m"
    )
    eval_sampler: Literal["ddpm", "ddim", "dpm_solver_2m"] = hp(
        "ddim", "sampler of deterministic (evaluation) actions"
    )
    layer_norm: bool = hp(False, "LayerNorm in the noise network (official: none)")


DIPOState = TargetPolicyState


def improve_actions(
    q_fn,
    obs: jax.Array,
    action: jax.Array,
    *,
    step_size: float,
    num_steps: int,
    optimizer: Literal["sgd", "adam"],
    max_grad_norm: float,
) -> jax.Array:
    """The action gradient: ``num_steps`` ascent steps of ``q_fn(obs, a) -> [B]`` in the actions,
    each ``a <- clip(a + eta g, -1, 1)`` for ``optimizer=sgd`` (Adam's step for ``adam``), where
    ``g = grad_a q_fn`` with its global norm over the batch clipped at ``max_grad_norm`` (0 = no
    clip). obs ``[B, obs_dim]``, action ``[B, A]`` -> ``[B, A]``."""
    transforms = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    step = optax.sgd(step_size) if optimizer == "sgd" else optax.adam(step_size, eps=1e-5)
    action_optimizer = optax.chain(*transforms, step)

    def ascend(_, carry):
        action, opt_state = carry
        # Each Q depends on its own action only, so the gradient of the sum is per-state.
        grad = jax.grad(lambda a: -jnp.sum(q_fn(obs, a)))(action)
        updates, opt_state = action_optimizer.update(grad, opt_state, action)
        return jnp.clip(optax.apply_updates(action, updates), -1.0, 1.0), opt_state

    action, _ = jax.lax.fori_loop(0, num_steps, ascend, (action, action_optimizer.init(action)))
    return action


def make(config: DIPOConfig, spec: EnvSpec) -> Agent:
    """Build DIPO's pure ``init`` / ``act`` / ``update`` / ``update_improving_actions``."""
    action_dim = spec.action_dim
    noise_net = NoiseNet(action_dim, config.actor_hidden_dims, layer_norm=config.layer_norm)
    critic = config.critic().clone(activation="mish")

    actor_optimizer = config.actor_optimizer()
    critic_optimizer = config.critic_optimizer()

    def init(key: jax.Array) -> DIPOState:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
        action = jnp.zeros((1, action_dim), jnp.float32)
        actor_params = noise_net.init(actor_key, obs, action, jnp.zeros((1,)))
        critic_params = critic.init(critic_key, obs, action)
        return init_target_policy_state(
            actor_params, critic_params, actor_optimizer, critic_optimizer
        )

    def sample_actions(actor_params, obs: jax.Array, key: jax.Array, sampler: str) -> jax.Array:
        """``a ~ pi(.|s)`` by the reverse diffusion chain, clipped to the box: ``[B, obs_dim]``
        -> ``[B, A]``."""
        action = diffusion.sample(
            lambda noisy_action, log_snr: noise_net.apply(actor_params, obs, noisy_action, log_snr),
            key,
            (*obs.shape[:-1], action_dim),
            sampler=sampler,
            num_steps=config.num_diffusion_steps,
        )
        return jnp.clip(action, -1.0, 1.0)

    def critic_loss_fn(critic_params, state: DIPOState, batch: Batch, key: jax.Array):
        """Twin-critic TD loss with the target policy's next action (no entropy term)."""
        next_action = sample_actions(state.target_actor_params, batch.next_obs, key, config.sampler)
        next_q = critic.apply(state.target_critic_params, batch.next_obs, next_action).min(0)
        target = jax.lax.stop_gradient(
            td_target(batch.reward, batch.terminated, next_q, config.gamma)
        )
        q = critic.apply(critic_params, batch.obs, batch.action)
        return jnp.sum(jnp.mean((q - target) ** 2, axis=-1)), q

    def behaviour_cloning_loss(actor_params, obs: jax.Array, action: jax.Array, key: jax.Array):
        """The denoising loss on the improved actions: noise ``a`` to a uniform level of the
        schedule and regress ``eps_phi`` onto the noise. ``[B, A]`` -> scalar."""
        level_key, noise_key = jax.random.split(key)
        log_snr = diffusion.sample_log_snr(level_key, action.shape[:-1])
        noise = jax.random.normal(noise_key, action.shape)
        noisy_action = (
            diffusion.alpha_from_log_snr(log_snr)[..., None] * action
            + diffusion.sigma_from_log_snr(log_snr)[..., None] * noise
        )
        prediction = noise_net.apply(actor_params, obs, noisy_action, log_snr)
        return jnp.mean((prediction - noise) ** 2)

    def gradient_step(
        state: DIPOState, batch: Batch, improved_action: jax.Array, key: jax.Array
    ) -> tuple[DIPOState, Metrics, jax.Array]:
        target_key, bc_key = jax.random.split(key)
        (critic_loss, q), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, target_key
        )
        critic_params, critic_opt_state = apply_gradients(
            critic_optimizer, state.critic_params, state.critic_opt_state, critic_grads
        )

        def q_fn(obs, action):
            return critic.apply(critic_params, obs, action).min(0)

        improved = jax.lax.stop_gradient(
            improve_actions(
                q_fn,
                batch.obs,
                improved_action,
                step_size=config.action_lr,
                num_steps=config.action_gradient_steps,
                optimizer=config.action_optimizer,
                max_grad_norm=config.action_grad_norm_ratio * action_dim,
            )
        )
        actor_loss, actor_grads = jax.value_and_grad(behaviour_cloning_loss)(
            state.actor_params, batch.obs, improved, bc_key
        )
        actor_params, actor_opt_state = apply_gradients(
            actor_optimizer, state.actor_params, state.actor_opt_state, actor_grads
        )
        update_target_actor = state.step % config.actor_target_every == 0
        target_actor_params = jax.lax.cond(
            update_target_actor,
            lambda: polyak_update(state.target_actor_params, actor_params, config.actor_tau),
            lambda: state.target_actor_params,
        )
        new_state = state.replace(
            actor_params=actor_params,
            target_actor_params=target_actor_params,
            critic_params=critic_params,
            target_critic_params=polyak_update(
                state.target_critic_params, critic_params, config.tau
            ),
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            step=state.step + 1,
        )
        metrics = {
            "critic_loss": critic_loss,
            "q_mean": q.mean(),
            "actor_loss": actor_loss,
            "action_q_gain": jnp.mean(q_fn(batch.obs, improved) - q_fn(batch.obs, improved_action)),
            "action_shift": jnp.mean(jnp.linalg.norm(improved - improved_action, axis=-1)),
        }
        return new_state, metrics, improved

    @jax.jit
    def update_improving_actions(
        state: DIPOState, batch: Batch, improved_action: jax.Array, key: jax.Array
    ) -> tuple[DIPOState, Metrics, jax.Array]:
        """One gradient step per leading index of ``batch`` (``[N, B, ...]``) and
        ``improved_action`` ``[N, B, A]``; returns the mean metrics and the improved actions
        ``[N, B, A]`` (step ``i`` starts from the actions given for its batch)."""
        keys = jax.random.split(key, improved_action.shape[0])

        def body(carry, inputs):
            new_state, metrics, improved = gradient_step(carry, *inputs)
            return new_state, (metrics, improved)

        state, (metrics, improved) = jax.lax.scan(body, state, (batch, improved_action, keys))
        return state, jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), metrics), improved

    @jax.jit
    def update(state: DIPOState, batch: Batch, key: jax.Array) -> tuple[DIPOState, Metrics]:
        """The same steps starting from the taken actions, without returning the improved ones."""
        return update_improving_actions(state, batch, batch.action, key)[:2]

    @functools.partial(jax.jit, static_argnames="deterministic")
    def act(state: DIPOState, obs: jax.Array, key: jax.Array, deterministic: bool):
        sampler = config.eval_sampler if deterministic else config.sampler
        return sample_actions(state.actor_params, obs, key, sampler)

    def critic_step(state: DIPOState, batch: Batch, key: jax.Array):
        return jax.grad(critic_loss_fn, has_aux=True)(state.critic_params, state, batch, key)

    def action_gradient(state: DIPOState, batch: Batch, key: jax.Array):
        return improve_actions(
            lambda obs, action: critic.apply(state.critic_params, obs, action).min(0),
            batch.obs,
            batch.action,
            step_size=config.action_lr,
            num_steps=config.action_gradient_steps,
            optimizer=config.action_optimizer,
            max_grad_norm=config.action_grad_norm_ratio * action_dim,
        )

    def actor_step(state: DIPOState, batch: Batch, key: jax.Array):
        return jax.grad(behaviour_cloning_loss)(state.actor_params, batch.obs, batch.action, key)

    phases = {
        "critic step": jax.jit(critic_step),
        "action gradient": jax.jit(action_gradient),
        "behaviour-cloning step": jax.jit(actor_step),
    }
    return Agent(
        init=init,
        act=act,
        update=update,
        phases=phases,
        update_improving_actions=update_improving_actions,
    )


PAPER_VALUES = {"learning_starts": 10_000, "batch_size": 256, "eval_every": 10_000}

# What the official code (BellmanTimeHut/DIPO) does that the paper's text does not say.
OFFICIAL_DIFFERENCES = {"action_optimizer": "adam", "adam_eps": 1e-5}

PRESETS = {
    "paper": Preset(
        PAPER_VALUES,
        "The paper's settings (README table: eta 0.03, 20 action gradient steps, norm ratio 0.1, "
        "100 diffusion steps, cosine schedule, batch 256, lr 3e-4, grad norm 2) with the code's "
        "10k random steps and evaluation every 10k steps.",
        suite="gym",
    ),
    "official": Preset(
        {**PAPER_VALUES, **OFFICIAL_DIFFERENCES},
        "`paper` plus the code's Adam on the actions and Adam epsilon 1e-5.",
        suite="gym",
    ),
    "cpu": Preset(
        {
            "action_optimizer": "adam",
            "num_diffusion_steps": 10,
            "actor_hidden_dims": (256, 256),
            "critic_hidden_dims": (256, 256),
            "batch_size": 128,
            "layer_norm": True,
            "learning_starts": 1_000,
            "eval_every": 1_000,
        },
        "The code's Adam on the actions (the paper's plain ascent with the batch-norm clip moves "
        "an action by ~0.004 per update and had not learned Pendulum-v1 by 6k steps; Adam: "
        "-181 at 6k), ten diffusion steps, two hidden layers, batch 128 and LayerNorm in the "
        "noise network, for short runs on CPU.",
    ),
}

"""What TF32 matrix products would do to the critic values each agent consumes, emulated on a CPU.

NVIDIA GPUs since Ampere multiply float32 matrices in TF32 by default under JAX: the operands are
rounded to a 10-bit mantissa, products accumulate in float32. This script evaluates a critic's
jaxpr with every ``dot_general`` operand rounded that way (``lax.reduce_precision(x, 8, 10)``) and
compares with full float32:

* a 2x256 ReLU critic ensemble (MaxEntDP's and SAC's) is fitted to a smooth Q*(s, a) of scale
  300 (HalfCheetah's returns at gamma 0.99), so that its outputs come from learned weights;
* for 64 states x K = 500 candidate actions in clouds of radius r around a centre: the error of
  Q (what SAC, CrossQ and DIME consume, linearly), and MaxEntDP's QNE weights
  softmax(min Q / beta) against float32's: total variation distance and effective sample size.

    python benchmarks/tf32_emulation.py        # prints markdown tables
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffmaxent.nn import EnsembleCritic

OBS_DIM, ACTION_DIM = 17, 6  # HalfCheetah's sizes
STATES, CANDIDATES = 64, 500
TEMPERATURES = (0.01, 0.05, 0.2)
# Candidate clouds: QNE draws its K candidates around a_t / alpha with std sigma / alpha, narrow at
# low noise levels and wide at high ones.
CANDIDATE_RADII = (0.01, 0.05, 0.3)


# Primitives that call an inner jaxpr, evaluated by recursion (they return a list of outputs).
CALL_PRIMITIVES = ("pjit", "jit", "closed_call", "custom_jvp_call")


def tf32(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=10)


def eval_with_tf32_products(closed_jaxpr, *args):
    """Evaluate ``closed_jaxpr`` with every matrix product's operands rounded to TF32."""

    def run(jaxpr, consts, values):
        env = {}

        def read(var):
            return var.val if type(var).__name__ == "Literal" else env[var]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, values, strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            inputs = [read(var) for var in eqn.invars]
            name = eqn.primitive.name
            if name == "dot_general":
                outputs = eqn.primitive.bind(*map(tf32, inputs), **eqn.params)
            elif name in CALL_PRIMITIVES:
                inner = eqn.params["jaxpr"] if "jaxpr" in eqn.params else eqn.params["call_jaxpr"]
                outputs = run(inner.jaxpr, inner.consts, inputs)
            else:
                outputs = eqn.primitive.bind(*inputs, **eqn.params)
            if not eqn.primitive.multiple_results and name not in CALL_PRIMITIVES:
                outputs = [outputs]
            for var, value in zip(eqn.outvars, outputs, strict=True):
                env[var] = value
        return [read(var) for var in jaxpr.outvars]

    return run(closed_jaxpr.jaxpr, closed_jaxpr.consts, args)


def target_q(obs: jax.Array, action: jax.Array) -> jax.Array:
    """A smooth Q* of scale 300 whose action dependence spans a few units, like a trained
    critic's near a good policy."""
    return 300.0 + 20.0 * jnp.tanh(obs[..., :3].sum(-1)) + 3.0 * jnp.sin(2.0 * action).sum(-1)


def fitted_critic(steps: int = 1_500):
    critic = EnsembleCritic((256, 256), 2)
    key = jax.random.PRNGKey(0)
    params = critic.init(key, jnp.zeros((1, OBS_DIM)), jnp.zeros((1, ACTION_DIM)))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        obs_key, action_key = jax.random.split(key)
        obs = jax.random.normal(obs_key, (256, OBS_DIM))
        action = jax.random.uniform(action_key, (256, ACTION_DIM), minval=-1, maxval=1)
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((critic.apply(p, obs, action) - target_q(obs, action)) ** 2)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i))
    return critic, params, float(loss)


def main() -> None:
    critic, params, loss = fitted_critic()

    def min_q(params, obs, actions):
        return critic.apply(params, obs, actions).min(0)

    obs_key, center_key, noise_key = jax.random.split(jax.random.PRNGKey(1), 3)
    obs = jax.random.normal(obs_key, (STATES, OBS_DIM))
    centers = jax.random.uniform(center_key, (STATES, 1, ACTION_DIM), minval=-0.8, maxval=0.8)
    noise = jax.random.normal(noise_key, (STATES, CANDIDATES, ACTION_DIM))
    print(f"critic fitted to Q* (rmse {loss**0.5:.2f}); candidates a = center + r n per state\n")
    print("| r | Q: mean abs | Q spread in a state (std) | TF32 error: rms / max | beta "
          "| QNE weights: TV vs float32 (mean / max) | ESS float32 / TF32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for radius in CANDIDATE_RADII:
        actions = jnp.clip(centers + radius * noise, -1.0, 1.0)
        closed = jax.make_jaxpr(min_q)(params, obs, actions)
        flat = jax.tree_util.tree_leaves((params, obs, actions))
        exact = np.asarray(min_q(params, obs, actions), np.float64)
        emulated = np.asarray(eval_with_tf32_products(closed, *flat)[0], np.float64)
        error = emulated - exact
        for beta in TEMPERATURES:
            w_exact = np.asarray(jax.nn.softmax(exact / beta, axis=1))
            w_tf32 = np.asarray(jax.nn.softmax(emulated / beta, axis=1))
            tv = 0.5 * np.abs(w_exact - w_tf32).sum(axis=1)
            ess = [float(np.mean(1.0 / np.sum(w**2, axis=1))) for w in (w_exact, w_tf32)]
            print(
                f"| {radius} | {np.abs(exact).mean():.1f} | {exact.std(axis=1).mean():.3f} | "
                f"{np.sqrt((error**2).mean()):.3f} / {np.abs(error).max():.3f} | {beta} | "
                f"{tv.mean():.3f} / {tv.max():.3f} | {ess[0]:.1f} / {ess[1]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

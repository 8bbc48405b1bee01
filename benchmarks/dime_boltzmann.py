"""DIME against a known Boltzmann optimum: how close does the trained policy come to it?

A one-step task (``MixtureBandit-v0``): a constant observation, a 2-D action in [-1, 1]^2, reward
``log p(a)`` for a mixture ``p`` of four equally weighted Gaussians (means (+-0.5, +-0.5), std
0.1), then the episode ends. The maximum-entropy objective ``E[r] + alpha H[pi]`` at ``alpha = 1``
equals ``-KL(pi || p)``, so its optimum is the mixture itself: a quarter of the samples at each
mode, 95.6% of them within 0.25 (2.5 std) of their mode, entropy ``H[p]`` (Monte Carlo).

DIME is trained with ``diffmaxent.train`` (a preset, ``temperature=1``, the settings under test),
then 8192 chains of the final policy give the fit:

* ``min share``: the smallest share of samples whose nearest mode is a given mode (0.25 at the
  optimum), and ``near``: the share within ``NEAR_RADIUS`` of its nearest mode;
* ``bound``: the mean entropy bound the agent optimises, and ``gap``: ``H[p] - bound``. At the
  optimum the bound is tight and equals ``H[p]``; a positive gap is the bound's looseness plus
  how far the policy is from ``p``;
* ``E[r] + bound``: the objective DIME maximises, at most 0 (``-KL`` minus the looseness).

    python benchmarks/dime_boltzmann.py                            # the trade-off table
    python benchmarks/dime_boltzmann.py --exact-q 1333             # the actor alone, exact Q
    python benchmarks/dime_boltzmann.py --steps-grid 4 8 --seeds 0 1 --set prior_std=1.0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import diffmaxent
from diffmaxent.agents.dime import make_policy
from diffmaxent.envs.mixture_bandit import (
    ENV_ID,
    MODE_STD,
    MODES,
    NEAR_RADIUS,
    mixture_entropy,
    mixture_log_density,
)

TRAIN_STEPS = 3_000
NUM_SAMPLES = 8_192


def policy_fit(policy, actor_params, num_samples: int, seed: int) -> dict[str, float]:
    """The fit to the mixture of ``num_samples`` chains of a DIME policy (observation 0)."""
    obs = jnp.zeros((num_samples, 1), jnp.float32)
    sample = jax.jit(policy.sample)(actor_params, obs, jax.random.PRNGKey(seed))
    action = np.asarray(sample.action, np.float64)
    distances = np.linalg.norm(action[:, None, :] - MODES, axis=-1)
    nearest = np.argmin(distances, axis=-1)
    shares = np.bincount(nearest, minlength=len(MODES)) / num_samples
    bound = float(np.mean(sample.entropy_bound))
    reward = float(np.mean(mixture_log_density(action)))
    return {
        "min_share": float(shares.min()),
        "near": float(np.mean(distances.min(axis=-1) < NEAR_RADIUS)),
        "bound": bound,
        "reward": reward,
        "dt": float(jax.nn.softplus(actor_params["dt"])),
        "friction": float(jnp.mean(jax.nn.softplus(actor_params["friction"]))),
    }


def fit(run_dir: Path, num_samples: int = NUM_SAMPLES, seed: int = 0) -> dict[str, float]:
    """The fit of a trained run's final policy."""
    loaded = diffmaxent.load(run_dir)
    policy = make_policy(loaded.config.agent, loaded.env_spec.action_dim)
    return policy_fit(policy, loaded.state.actor_params, num_samples, seed)


def exact_q_fit(settings: dict, seed: int, actor_updates: int, preset: str = "cpu") -> dict:
    """DIME's actor step alone against the exact ``Q(a) = log p(a)`` (no critic, no replay):
    ``actor_updates`` steps of the preset's actor optimiser on ``mean[-log p(a) + cost]`` over
    batches of the preset's size. What the policy class, its bound and the optimiser allow."""
    start = time.perf_counter()
    values = {"temperature": 1.0, **settings}
    resolved = diffmaxent.resolve_config("dime", ENV_ID, preset=preset, overrides=values)
    config = resolved.agent
    policy = make_policy(config, action_dim=2)
    params = policy.init(jax.random.PRNGKey(seed), 1)
    optimizer = optax.chain(
        optax.zero_nans(), optax.clip(config.actor_grad_clip), config.actor_optimizer()
    )
    opt_state = optimizer.init(params)
    obs = jnp.zeros((resolved.loop.batch_size, 1), jnp.float32)
    modes = jnp.asarray(MODES, jnp.float32)

    def log_density(action):
        squared = jnp.sum((action[..., None, :] - modes) ** 2, axis=-1)
        log_components = -0.5 * squared / MODE_STD**2 - jnp.log(2 * jnp.pi * MODE_STD**2)
        return jax.nn.logsumexp(log_components, axis=-1) - jnp.log(len(MODES))

    @jax.jit
    def step(params, opt_state, key):
        def loss(actor_params):
            sample = policy.sample(actor_params, obs, key)
            return jnp.mean(-log_density(sample.action) + sample.cost)

        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.PRNGKey(seed + 1)
    for _ in range(actor_updates):
        key, step_key = jax.random.split(key)
        params, opt_state = step(params, opt_state, step_key)
    return {
        **policy_fit(policy, params, NUM_SAMPLES, seed),
        "seconds": time.perf_counter() - start,
    }


def train_and_fit(
    settings: dict, seed: int, out: Path, steps: int = TRAIN_STEPS, preset: str = "cpu"
) -> dict[str, float]:
    """Train DIME on the bandit at ``alpha = 1`` with ``settings`` on top of ``preset``."""
    start = time.perf_counter()
    result = diffmaxent.train(
        "dime",
        ENV_ID,
        steps=steps,
        seed=seed,
        out=out,
        preset=preset,
        overrides={"temperature": 1.0, **settings},
        progress=False,
    )
    return {**fit(result.run_dir, seed=seed), "seconds": time.perf_counter() - start}


def _parse_settings(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps-grid",
        type=int,
        nargs="+",
        default=[4, 8, 16],
        help="diffusion steps to try (default 4 8 16)",
    )
    parser.add_argument(
        "--step-sizes",
        nargs="+",
        default=["learned", "fixed"],
        choices=["learned", "fixed"],
        help="learned and/or fixed dt and friction",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=TRAIN_STEPS,
        help=f"env steps per run (default {TRAIN_STEPS})",
    )
    parser.add_argument("--preset", default="cpu", help="DIME preset (default cpu)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a further override for every run (repeatable)",
    )
    parser.add_argument(
        "--exact-q",
        type=int,
        metavar="UPDATES",
        help="instead of training the agent: this many actor steps against the exact Q",
    )
    args = parser.parse_args()

    entropy = mixture_entropy()
    print(
        f"mixture: H[p] = {entropy:.3f} nats; the mixture itself has min share 0.25, "
        f"near {1 - np.exp(-0.5 * (NEAR_RADIUS / MODE_STD) ** 2):.3f}"
    )
    print(
        "| diffusion steps | step sizes | seed | min share | near | bound | gap to H[p] "
        "| E[r] + bound | dt | friction | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    extra = _parse_settings(args.set)
    with tempfile.TemporaryDirectory() as scratch:
        for num_steps in args.steps_grid:
            for step_sizes in args.step_sizes:
                learned = step_sizes == "learned"
                settings = {
                    "num_diffusion_steps": num_steps,
                    "learn_dt": learned,
                    "learn_friction": learned,
                    **extra,
                }
                for seed in args.seeds:
                    if args.exact_q:
                        row = exact_q_fit(settings, seed, args.exact_q, args.preset)
                    else:
                        out = Path(scratch) / f"n{num_steps}-{step_sizes}-s{seed}"
                        row = train_and_fit(settings, seed, out, args.train_steps, args.preset)
                    print(
                        f"| {num_steps} | {step_sizes} | {seed} | {row['min_share']:.3f} "
                        f"| {row['near']:.3f} | {row['bound']:+.3f} "
                        f"| {entropy - row['bound']:+.3f} | {row['reward'] + row['bound']:+.3f} "
                        f"| {row['dt']:.3f} | {row['friction']:.3f} | {row['seconds']:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()

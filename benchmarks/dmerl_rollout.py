"""Env steps per second of the augmented-MDP rollout (DiffPPO's ``collect``, all K denoising
steps of all envs in one jitted call) for K = 4, 8, 16, against plain Gaussian PPO on the same
vector env, and against the same MDP driven through the Gymnasium wrapper (K Python round-trips
per env step).

    python benchmarks/dmerl_rollout.py              # prints a markdown table
    python benchmarks/dmerl_rollout.py --envs 64 --set actor_hidden_dims=256,256,256,256

Columns: env steps/s of the full rollout (act + vector-env step + storing; median of
``--repeats`` timed rollouts), the median time of one ``collect`` call alone (no env), and the
median time of K separate jitted calls of one denoising kernel for the same batch (what K
round-trips to Python would cost in network calls alone, before any env overhead).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.api import resolve_config
from diffmaxent.bench import median_seconds
from diffmaxent.config import parse_assignments
from diffmaxent.envs import make_env
from diffmaxent.envs.augmented import AugmentedMDPEnv
from diffmaxent.loops.rollout import collect_rollout, make_vector_env
from diffmaxent.registry import ALGOS


def rollout_rate(
    algo: str, overrides: dict, env_id: str, num_envs: int, steps: int, repeats: int
) -> dict:
    config = resolve_config(algo, env_id, overrides={**overrides, "num_envs": num_envs})
    envs = make_vector_env(env_id, num_envs, seed=0)
    agent = ALGOS[algo].make(config.agent, make_env(env_id).env_spec)
    state = agent.init(jax.random.PRNGKey(0))
    obs, _ = envs.reset()
    key = jax.random.PRNGKey(1)
    rollout, obs, key = collect_rollout(agent, state, envs, obs, key, 20)  # compile, warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        rollout, obs, key = collect_rollout(agent, state, envs, obs, key, steps)
        jax.block_until_ready(rollout.extras)
        rates.append(num_envs * steps / (time.perf_counter() - start))
    envs.close()
    batch = jnp.asarray(obs)
    collect_seconds = median_seconds(lambda: agent.collect(state, batch, key), 200, warmup=3)
    return {
        "env_steps_per_s": float(np.median(rates)),
        "collect_ms": 1e3 * collect_seconds,
        "state": state,
        "config": config,
    }


def kernel_ms(config, env_id: str, num_envs: int) -> float:
    """Median time of one jitted denoising-kernel evaluation for ``num_envs`` states."""
    from diffmaxent.diffusion.augmented import DenoisingPolicy

    spec = make_env(env_id).env_spec
    agent_config = config.agent
    policy = DenoisingPolicy(
        spec.action_dim,
        agent_config.num_diffusion_steps,
        agent_config.actor_hidden_dims,
        agent_config.prior_std,
        agent_config.step_size,
        agent_config.min_step_fraction,
        agent_config.step_schedule,
    )
    params = policy.init(jax.random.PRNGKey(0), spec.obs_dim)
    obs = jnp.zeros((num_envs, spec.obs_dim))
    x = jnp.zeros((num_envs, spec.action_dim))
    k = jnp.zeros((num_envs,), jnp.int32)
    kernel = jax.jit(policy.kernel)
    return 1e3 * median_seconds(lambda: kernel(params, obs, x, k), 200, warmup=3)


def wrapper_rate(num_steps: int, env_id: str, env_steps: int) -> float:
    """Env steps/s when the same MDP is stepped one denoising transition at a time through
    :class:`AugmentedMDPEnv` (one env, one jitted kernel call per augmented step)."""
    from diffmaxent.diffusion.augmented import DenoisingPolicy, kernel_noise

    env = AugmentedMDPEnv(make_env(env_id, seed=0), num_steps, jax.random.PRNGKey(0))
    policy = DenoisingPolicy(env.action_dim, num_steps, (64, 64))
    params = policy.init(jax.random.PRNGKey(0), env.observation_space["obs"].shape[0])
    kernel = jax.jit(policy.kernel)
    obs, _ = env.reset()

    def step(obs):
        k = obs["step"]
        noise = np.asarray(kernel_noise(env.step_key, num_steps, (1, env.action_dim))[k])
        mean, std = kernel(params, obs["obs"][None], obs["latent"][None], jnp.asarray([k]))
        next_obs, _, terminated, truncated, _ = env.step(np.asarray(mean + std * noise)[0])
        return env.reset()[0] if terminated or truncated else next_obs

    for _ in range(3 * num_steps):
        obs = step(obs)
    start = time.perf_counter()
    for _ in range(env_steps * num_steps):
        obs = step(obs)
    return env_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--envs", type=int, default=8, help="vector envs")
    parser.add_argument("--steps", type=int, default=500, help="vector steps per timed rollout")
    parser.add_argument("--repeats", type=int, default=5, help="timed rollouts (median)")
    parser.add_argument("--wrapper-steps", type=int, default=200, help="env steps via wrapper")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="diffppo hyperparameter (repeatable), e.g. actor_hidden_dims=256,256,256,256",
    )
    args = parser.parse_args()
    overrides = parse_assignments(args.assignments)

    print(
        f"backend {jax.default_backend()}, {args.env}, {args.envs} envs, "
        f"{args.repeats} x {args.steps} vector steps, diffppo overrides {overrides}\n"
    )
    print("| agent | K | env steps/s | one collect call (ms) | K separate kernel calls (ms) |")
    print("|---|---|---|---|---|")
    ppo = rollout_rate("ppo", {}, args.env, args.envs, args.steps, args.repeats)
    print(f"| ppo | - | {ppo['env_steps_per_s']:.0f} | {ppo['collect_ms']:.3f} | - |")
    for num_steps in (4, 8, 16):
        result = rollout_rate(
            "diffppo",
            {**overrides, "num_diffusion_steps": num_steps},
            args.env,
            args.envs,
            args.steps,
            args.repeats,
        )
        separate = num_steps * kernel_ms(result["config"], args.env, args.envs)
        print(
            f"| diffppo | {num_steps} | {result['env_steps_per_s']:.0f} | "
            f"{result['collect_ms']:.3f} | {separate:.3f} |"
        )
    for num_steps in (4, 8, 16):
        rate = wrapper_rate(num_steps, args.env, args.wrapper_steps)
        print(f"| wrapper (1 env, K Python steps) | {num_steps} | {rate:.0f} | - | - |")


if __name__ == "__main__":
    main()

"""Where an env step's time goes on an ``mjx:`` task (CPU or GPU): one env's jitted physics
advance and reset, then ``num_envs`` envs stepped together as the device loop steps them
(``MJXEnv.step_envs``: resets only on steps where an episode ended) against ``jax.vmap(step)``
(every env's reset computed on every step, kept where an episode ended). Uniform random actions
in [-1, 1]; ``--steps`` env steps per jitted call (a ``lax.scan``), so that dispatch is not timed.

    python benchmarks/mjx_step.py --env mjx:CheetahRun --num-envs 8 64
"""

from __future__ import annotations

import argparse
import time

import jax

from diffmaxent.envs.mjx import make_mjx_env


def per_call_seconds(fn, args, repeats: int) -> tuple[float, float]:
    """(compile + first call, median of later calls) in seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="mjx:CheetahRun")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--steps", type=int, default=10, help="env steps per jitted call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = make_mjx_env(args.env)
    key = jax.random.PRNGKey(0)

    def actions(shape):
        return jax.random.uniform(key, (args.steps, *shape), minval=-1.0, maxval=1.0)

    def scanned(step):
        def run(state, actions):
            return jax.lax.scan(lambda s, a: (step(s, a)[0], None), state, actions)[0].obs

        return jax.jit(run)

    print(f"{args.env}, {jax.default_backend()}, {args.steps} env steps per call")
    print()
    print("| what | envs | compile + first call s | ms per step (reset: per reset) | env steps/s |")
    print("|---|---|---|---|---|")

    def row(name, fn, fn_args, envs):
        first, seconds = per_call_seconds(fn, fn_args, args.repeats)
        per_step = seconds / args.steps
        print(f"| {name} | {envs} | {first:.0f} | {per_step * 1e3:.2f} | {envs / per_step:,.0f} |")

    one = env.reset(key)
    row(
        "advance (the host loop's call)",
        scanned(lambda s, a: env.advance(s, env.to_env_action(a))),
        (one, actions((env.action_dim,))),
        1,
    )
    resets = jax.random.split(key, args.steps)
    reset_all = jax.jit(lambda keys: jax.lax.map(env.reset, keys).obs)
    row("reset", reset_all, (resets,), 1)
    for num_envs in args.num_envs:
        states = jax.vmap(env.reset)(jax.random.split(key, num_envs))
        batch = actions((num_envs, env.action_dim))
        row("vmap(step): resets every step", scanned(jax.vmap(env.step)), (states, batch), num_envs)
        row("step_envs: resets at episode ends", scanned(env.step_envs), (states, batch), num_envs)


if __name__ == "__main__":
    main()

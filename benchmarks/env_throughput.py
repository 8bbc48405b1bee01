"""Env steps per second through diffmaxent's wrappers (`make_env`) against the raw simulator API.

Raw means: `gymnasium.make(id)` for Gym and MyoSuite ids, `dm_control.suite.load(domain, task)`
for DMC. Both loops step with uniform random actions (drawn before timing, so the cost of drawing
them is not counted) and reset when an episode ends.

    python benchmarks/env_throughput.py [--seconds 3] [ENV_ID ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

DEFAULT_ENVS = [
    "HalfCheetah-v5",
    "Humanoid-v5",
    "dmc:cheetah-run",
    "dmc:humanoid-run",
    "dmc:dog-run",
    "myo:myoHandReorient8-v0",
]


def timed_loop(step, reset, actions: np.ndarray, seconds: float) -> float:
    """Steps per second of `step(action)` (which returns True at an episode end)."""
    reset()
    for action in actions[:50]:  # warm-up
        if step(action):
            reset()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            if step(action):
                reset()
        count += len(actions)
    return count / (time.perf_counter() - start)


def raw_env(env_id: str):
    """(step, reset, action_dim, low, high) of the simulator without diffmaxent."""
    if env_id.startswith("dmc:"):
        from dm_control import suite

        domain, task = env_id[4:].split("-", 1)
        env = suite.load(domain, task, task_kwargs={"random": 0})
        spec = env.action_spec()
        env.reset()
        return (
            lambda a: env.step(a).last(),
            env.reset,
            spec.shape[0],
            spec.minimum,
            spec.maximum,
        )
    import gymnasium as gym

    if env_id.startswith("myo:"):
        import myosuite  # noqa: F401

        env_id = env_id[4:]
    env = gym.make(env_id)
    env.reset(seed=0)

    def step(action):
        _, _, terminated, truncated, _ = env.step(action)
        return terminated or truncated

    space = env.action_space
    return step, env.reset, space.shape[0], space.low, space.high


def wrapped_env(env_id: str):
    from diffmaxent.envs import make_env

    env = make_env(env_id, seed=0)

    def step(action):
        _, _, terminated, truncated, _ = env.step(action)
        return terminated or truncated

    return step, env.reset, env.env_spec.action_dim, -1.0, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("envs", nargs="*", default=DEFAULT_ENVS)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'env':<28} {'raw steps/s':>12} {'make_env steps/s':>17} {'ratio':>6}")
    for env_id in args.envs:
        rates = []
        for make in (raw_env, wrapped_env):
            step, reset, action_dim, low, high = make(env_id)
            unit = rng.uniform(-1, 1, (500, action_dim))
            actions = np.asarray(low) + (unit + 1) * 0.5 * (np.asarray(high) - np.asarray(low))
            if make is wrapped_env:
                actions = unit
            rates.append(timed_loop(step, reset, actions.astype(np.float32), args.seconds))
        print(f"{env_id:<28} {rates[0]:>12,.0f} {rates[1]:>17,.0f} {rates[1] / rates[0]:>6.2f}")


if __name__ == "__main__":
    main()

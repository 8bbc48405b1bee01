"""Several seeds in one process against separate runs: wall time, and where it goes.

For each ``ALGO:ENV:STEPS`` case (cpu preset) this runs, one after another on an otherwise idle
machine,

* ``diffmaxent train --seeds 0-(S-1)``: the seeds trained together in one process, once with
  ``--seed-batching map`` and once with ``vmap``, and
* ``diffmaxent train --seed i`` for each seed: S separate processes,

each as a fresh ``python -m diffmaxent.cli`` subprocess (so every separate run pays its own
start-up and compilation, as separate runs do), and reports the wall times and the ratio
``together / sum(separate)``. With ``--profile`` it then trains the group (``auto`` batching)
and one seed alone in this process with timers around the library's functions and splits each
wall time into: agent initialisation, compilation (the first call of the jitted update and
act), updates, acting (training-time ``act``), env steps, replay sampling, evaluation,
checkpoints and the rest (process start-up, env construction, the loop's own Python).

    python benchmarks/seeds.py                                   # sac and maxentdp, 5 seeds
    python benchmarks/seeds.py --cases sac:Pendulum-v1:3000 --seeds 5 --profile
    python benchmarks/seeds.py --update-cost                     # ms per update call only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import diffmaxent
from diffmaxent import ALGOS, make_env, resolve_config
from diffmaxent.buffer import ReplayBuffer, zeros_batch
from diffmaxent.loops import bookkeeping, replay
from diffmaxent.loops.seeds import SeedAxis
from diffmaxent.registry import make_agent

CASES = ["sac:Pendulum-v1:3000", "maxentdp:MultiGoal-v0:3000"]


def _train_subprocess(
    algo: str, env: str, steps: int, out: Path, seeds: str | None, seed: int, batching: str = "auto"
):
    which = ["--seeds", seeds, "--seed-batching", batching] if seeds else ["--seed", str(seed)]
    command = [sys.executable, "-m", "diffmaxent.cli", "train", "--algo", algo, "--env", env,
               "--steps", str(steps), "--out", str(out), "--quiet", *which]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


class _Timers:
    """Wall time spent in a few library functions, patched for the duration of a run; the first
    call of each jitted function (its compilation) is counted apart."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, part: str, first_call: str | None = None) -> None:
        original = getattr(owner, name)
        calls = [0]

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = jax.block_until_ready(original(*args, **kwargs))
            calls[0] += 1
            where = first_call if first_call is not None and calls[0] == 1 else part
            self.seconds[where] = self.seconds.get(where, 0.0) + time.perf_counter() - start
            return result

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def _profile(algo: str, env: str, steps: int, out: Path, seeds: list[int]) -> dict[str, float]:
    timers = _Timers()
    timers.wrap(SeedAxis, "start", "start-up (agent init)")
    timers.wrap(SeedAxis, "update", "updates", "compilation (first update)")
    timers.wrap(SeedAxis, "act", "acting", "compilation (first act)")
    timers.wrap(replay, "_step", "env steps")
    timers.wrap(ReplayBuffer, "sample", "replay sampling")
    timers.wrap(bookkeeping, "evaluate", "evaluation")
    timers.wrap(bookkeeping.RunRecorder, "checkpoint", "checkpoints")
    start = time.perf_counter()
    try:
        diffmaxent.train(algo, env, steps=steps, seeds=seeds, out=out, progress=False)
    finally:
        timers.restore()
    wall = time.perf_counter() - start
    parts = dict(timers.seconds)
    parts["rest"] = wall - sum(parts.values())
    parts["total"] = wall
    return parts


def _update_costs(algo: str, env_id: str, num_seeds: int, repeats: int = 30) -> dict[str, float]:
    """Milliseconds per ``update`` call (cpu preset, random batches): one seed alone, and
    ``num_seeds`` seeds on a seed axis with each batching."""
    config = resolve_config(algo, env_id)
    env = make_env(env_id, seed=0)
    agent = make_agent(config, env.env_spec)
    env.close()
    loop = config.loop
    rng = np.random.default_rng(0)

    def batch():
        shapes = zeros_batch(
            env.env_spec.obs_dim, env.env_spec.action_dim, loop.batch_size, loop.updates_per_step
        )
        return jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes)

    def milliseconds(call) -> float:
        jax.block_until_ready(call())  # compile
        start = time.perf_counter()
        for _ in range(repeats):
            result = call()
        jax.block_until_ready(result)
        return (time.perf_counter() - start) / repeats * 1000

    key, state = SeedAxis(agent, 1).start([0])
    alone = batch()
    costs = {"one seed": milliseconds(lambda: agent.update(state, alone, key))}
    for batching in ("vmap", "map"):
        axis = SeedAxis(agent, num_seeds, batching)
        keys, states = axis.start(list(range(num_seeds)))
        batches = axis.pack([batch() for _ in range(num_seeds)])
        costs[f"{num_seeds} seeds, {batching}"] = milliseconds(
            lambda axis=axis, states=states, batches=batches, keys=keys: axis.update(
                states, batches, keys
            )
        )
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="ALGO:ENV:STEPS")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per case")
    parser.add_argument("--profile", action="store_true", help="also split the time")
    parser.add_argument(
        "--update-cost",
        action="store_true",
        help="only the cost of one update call: one seed, and the seeds with vmap and map",
    )
    args = parser.parse_args()
    if args.update_cost:
        for case in args.cases:
            algo, env, _ = case.split(":")
            costs = _update_costs(algo, env, args.seeds)
            single = costs["one seed"]
            print(f"{algo} {env}: " + ", ".join(
                f"{name} {ms:.1f} ms ({ms / single:.2f}x)" for name, ms in costs.items()
            ))  # fmt: skip
        return
    seeds = list(range(args.seeds))
    n = args.seeds
    print(
        f"| case | {n} separate runs (s) | {n} seeds together, map (s) | ratio | "
        f"{n} seeds together, vmap (s) | ratio |"
    )
    print("|---|---|---|---|---|---|")
    profiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            algo, env, steps_text = case.split(":")
            steps = int(steps_text)
            root = Path(tmp) / algo
            listed = f"0-{n - 1}"
            mapped = _train_subprocess(algo, env, steps, root / "map", listed, 0, "map")
            vmapped = _train_subprocess(algo, env, steps, root / "vmap", listed, 0, "vmap")
            separate = [
                _train_subprocess(algo, env, steps, root / f"seed{seed}", None, seed)
                for seed in seeds
            ]
            total = sum(separate)
            print(
                f"| {algo} {env} {steps} steps | {total:.1f} "
                f"({' + '.join(f'{s:.1f}' for s in separate)}) | {mapped:.1f} | "
                f"{mapped / total:.2f} | {vmapped:.1f} | {vmapped / total:.2f} |",
                flush=True,
            )
            if args.profile:
                if ALGOS[algo].loop.name != "replay":
                    raise SystemExit("--profile splits the replay loop only")
                group = _profile(algo, env, steps, root / "profile-group", seeds)
                alone = _profile(algo, env, steps, root / "profile-alone", [0])
                profiles.append((case, group, alone))
    for case, group, alone in profiles:
        print(f"\n{case}: seconds per part, {args.seeds} seeds together | one seed alone")
        for part in sorted(set(group) | set(alone), key=lambda p: (p in ("rest", "total"), p)):
            print(f"  {part:28s} {group.get(part, 0.0):8.1f} | {alone.get(part, 0.0):8.1f}")


if __name__ == "__main__":
    main()

"""Env steps per second of the device loop against the host loop on the same ``mjx:`` task and
agent settings: ``diffmaxent.train`` once per loop, the rate taken between the first and the last
evaluation row of ``metrics.csv`` (compilation before the first row is left out; the evaluations
in between, ``eval_episodes`` episodes each, are in).

The host loop steps the same MJX physics one jitted call at a time through the Gymnasium adapter
(``make_env``), the device loop runs chunks of steps in one compiled program.

    python benchmarks/device_loop.py sac --steps 4000 --set learning_starts=1000 eval_every=1000
    python benchmarks/device_loop.py ppo --steps 40960 --set eval_every=8192
    python benchmarks/device_loop.py sac --loops device --steps 64000 --set num_envs=16 ...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import diffmaxent
from diffmaxent import api
from diffmaxent.config import parse_assignments


def rate(rows: list[dict]) -> float:
    """Env steps per second between the first and the last evaluation row."""
    first, last = rows[0], rows[-1]
    if last["env_step"] == first["env_step"]:
        raise SystemExit("device_loop.py: one evaluation row; --steps must reach a second one")
    return (last["env_step"] - first["env_step"]) / (last["wall_seconds"] - first["wall_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo")
    parser.add_argument("--env", default="mjx:CartpoleBalance")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--loops", nargs="+", default=["host", "device"])
    parser.add_argument("--set", nargs="*", default=[], help="NAME=VALUE overrides (both loops)")
    args = parser.parse_args()
    overrides = parse_assignments(args.set)
    device_only = {"num_envs"} if args.algo not in ("ppo", "diffppo") else set()
    device_loop_for = api.loop_for
    print(f"| loop | {args.algo} on {args.env}, {args.steps} steps | env steps/s | wall s |")
    print("|---|---|---|---|")
    for loop in args.loops:
        # The host loop on an mjx: env: the algorithm's own loop instead of the device loop.
        api.loop_for = device_loop_for if loop == "device" else (lambda spec, env: spec.loop)
        values = {k: v for k, v in overrides.items() if loop == "device" or k not in device_only}
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = diffmaxent.train(
                args.algo,
                args.env,
                steps=args.steps,
                preset=args.preset,
                overrides=values,
                out=Path(out) / "run",
                progress=False,
            )
            wall = time.perf_counter() - start
        settings = " ".join(f"{k}={v}" for k, v in values.items())
        print(f"| {loop} | {settings} | {rate(result.metrics):.0f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()

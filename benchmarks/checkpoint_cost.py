"""Cost of a training checkpoint and of resuming from it: the replay rows (incremental) and the
agent's state.

Part 1, the replay buffer (`ReplayBuffer.save_rows` against a full `restore`):
Fills a `ReplayBuffer` with random transitions of an env's shapes (Humanoid-v5: obs 348, action
17, 2,864 bytes a transition) in blocks of `--every` (an evaluation interval) and, after each
block, saves the new rows as one chunk, as a training run's checkpoint would (then prunes the
chunks a restore of that checkpoint no longer needs). At each `--report-at` count of stored
transitions it reports the wall time and file size of that last `save_rows`, the size of the
whole replay directory, and the wall time of `ReplayBuffer.restore` of the whole buffer (checked
equal to the live one; median of `--repeats`), first with the chunks in the page cache (just
written) and then after asking the kernel to drop them (`posix_fadvise(DONTNEED)`, as on a fresh
machine).

The chunks go to a temporary directory under /tmp (or `--tmp`), deleted at the end. The run needs
about min(`--until`, `--capacity`) x 2,864 bytes free there, and memory for two buffers (the live
one and the restored one it is compared with: 5.8 GB at 1M).

Part 2, the rest of a checkpoint (`--algos`): the agent state (parameters and optimiser states),
the loop's arrays and the env's physics, written by `checkpoint.save` and read back as resume
does (`checkpoint.restore`, `read_loop_arrays`, `read_meta`), for each `ALGO:PRESET` on the env.

    python benchmarks/checkpoint_cost.py --until 100000     # 100k only, ~0.3 GB on disk
    python benchmarks/checkpoint_cost.py                    # to 1M, ~2.9 GB on disk
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from diffmaxent import checkpoint, make_env, resolve_config
from diffmaxent.buffer import FIELDS, ReplayBuffer, prune_rows
from diffmaxent.loops.bookkeeping import capture_env, key_array
from diffmaxent.registry import make_agent


def add_random_block(buffer: ReplayBuffer, rng: np.random.Generator, count: int) -> None:
    """Add ``count`` random transitions one by one, as the training loop does."""
    obs_dim, action_dim = buffer.obs.shape[1], buffer.action.shape[1]
    obs = rng.standard_normal((count, obs_dim), dtype=np.float32)
    action = rng.uniform(-1, 1, (count, action_dim)).astype(np.float32)
    reward = rng.standard_normal(count, dtype=np.float32)
    next_obs = rng.standard_normal((count, obs_dim), dtype=np.float32)
    terminated = rng.random(count) < 0.001
    for i in range(count):
        buffer.add(obs[i], action[i], reward[i], next_obs[i], terminated[i], False)


def evict_from_page_cache(directory: Path) -> None:
    """Ask the kernel to forget the cached pages of every file in ``directory`` (already fsynced,
    so they are clean and can go), making the next read come from the disk."""
    for path in directory.iterdir():
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def timed_restore(directory: Path, buffer: ReplayBuffer) -> float:
    """Seconds to restore the whole buffer from ``directory``, after checking the result."""
    start = time.perf_counter()
    restored = ReplayBuffer.restore(
        directory, buffer.capacity, buffer.obs.shape[1], buffer.action.shape[1], buffer.inserted
    )
    seconds = time.perf_counter() - start
    for field in FIELDS:
        if not np.array_equal(getattr(restored, field), getattr(buffer, field)):
            raise AssertionError(f"restored {field} differs from the live buffer")
    return seconds


def evicted_then_timed_restore(directory: Path, buffer: ReplayBuffer) -> float:
    evict_from_page_cache(directory)
    return timed_restore(directory, buffer)


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def agent_checkpoint_cost(
    algo: str, preset: str, env_id: str, directory: Path, repeats: int
) -> tuple[float, float, float]:
    """Median seconds to save and to read back the non-replay part of a checkpoint, and its MB."""
    config = resolve_config(algo, env_id, preset=preset)
    env = config.make_env(0)
    obs, _ = env.reset()
    agent = make_agent(config, env.env_spec)
    template = agent.init(jax.random.PRNGKey(0))
    arrays = {"key": key_array(jax.random.PRNGKey(1)), "obs": obs}
    meta = {
        "env_step": 1,
        "config": config.to_json(env.env_spec),
        "loop": {"env": capture_env(env, "env/", arrays)},
    }
    target = checkpoint.step_directory(directory, 1)
    saves, reads = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        checkpoint.save(target, template, meta, arrays)
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(checkpoint.restore(target, template))
        checkpoint.read_loop_arrays(target)
        checkpoint.read_meta(target)
        reads.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in target.iterdir()) / 1e6
    env.close()
    return statistics.median(saves), statistics.median(reads), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Humanoid-v5", help="env whose obs/action dims to use")
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=10_000, help="transitions per checkpoint")
    parser.add_argument(
        "--until", type=int, default=None, help="transitions to add (default: capacity)"
    )
    parser.add_argument(
        "--report-at",
        default="100000,1000000",
        help="comma-separated insert counts to report at (each a multiple of --every)",
    )
    parser.add_argument("--tmp", default="/tmp", help="where to create the replay directory")
    parser.add_argument("--repeats", type=int, default=3, help="restores timed per report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--algos",
        default="sac:paper,maxentdp:paper,dime:paper-gym",
        help="ALGO:PRESET pairs whose agent-state checkpoint to time (empty: none)",
    )
    args = parser.parse_args()
    until = args.capacity if args.until is None else args.until
    report_at = sorted(n for n in map(int, args.report_at.split(",")) if n <= until)

    spec = make_env(args.env).env_spec
    buffer = ReplayBuffer(args.capacity, spec.obs_dim, spec.action_dim)
    row_bytes = sum(getattr(buffer, field)[:1].nbytes for field in FIELDS)
    needed = min(until, args.capacity + args.every) * row_bytes
    free = shutil.disk_usage(args.tmp).free
    if needed > 0.9 * free:
        parser.error(f"needs ~{needed / 1e9:.1f} GB in {args.tmp}, which has {free / 1e9:.1f} GB")
    print(
        f"{args.env}: obs {spec.obs_dim}, action {spec.action_dim}, {row_bytes} B/transition; "
        f"capacity {args.capacity:,}, a checkpoint every {args.every:,}, to {until:,}"
    )

    rng = np.random.default_rng(args.seed)
    directory = Path(tempfile.mkdtemp(prefix="replay_checkpoint_cost_", dir=args.tmp))
    save_seconds: list[float] = []
    rows = []
    try:
        while buffer.inserted < until:
            saved_up_to = buffer.inserted
            add_random_block(buffer, rng, min(args.every, until - buffer.inserted))
            start = time.perf_counter()
            chunk = buffer.save_rows(directory, saved_up_to)
            save_seconds.append(time.perf_counter() - start)
            # As a run that keeps only its latest checkpoint: past one capacity, the oldest go.
            prune_rows(directory, buffer.inserted - args.capacity)
            if buffer.inserted in report_at:
                # Medians: other work on a shared machine makes single restores vary 2-3x.
                warm = statistics.median(
                    timed_restore(directory, buffer) for _ in range(args.repeats)
                )
                cold = statistics.median(
                    evicted_then_timed_restore(directory, buffer) for _ in range(args.repeats)
                )
                rows.append(
                    (
                        f"{buffer.inserted:,}",
                        f"{save_seconds[-1] * 1e3:.0f}",
                        f"{statistics.median(save_seconds) * 1e3:.0f}",
                        f"{chunk.stat().st_size / 1e6:.1f}",
                        f"{directory_bytes(directory) / 1e9:.2f}",
                        f"{warm:.2f}",
                        f"{cold:.2f}",
                    )
                )
                print(f"  reported at {buffer.inserted:,}", flush=True)
    finally:
        shutil.rmtree(directory)

    pairs = [pair.split(":") for pair in args.algos.split(",") if pair]
    agent_rows = []
    for algo, preset in pairs:
        with tempfile.TemporaryDirectory(dir=args.tmp) as scratch:
            save, read, size = agent_checkpoint_cost(
                algo, preset, args.env, Path(scratch), args.repeats
            )
        agent_rows.append((f"{algo} ({preset})", f"{size:.1f}", f"{save:.2f}", f"{read:.2f}"))
    if agent_rows:
        print("| agent state, loop and env | MB | save s (median) | read back s (median) |")
        print("|---|---|---|---|")
        for row in agent_rows:
            print("| " + " | ".join(row) + " |")

    header = (
        "inserted",
        "save_rows ms",
        "median save ms (so far)",
        "chunk MB",
        "replay dir GB",
        "restore s (cached, median)",
        "restore s (evicted, median)",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

"""Fingerprint the behaviour of every algorithm, to check that a refactor changed nothing.

For each registered algorithm (small settings, Pendulum-v1, seed 0) this records

* ``gradient_steps``: a SHA-256 of every state leaf and every metric after 8 gradient steps
  (4 ``update`` calls of 2 steps on a fixed replay buffer; on-policy agents: 4 updates on one
  fixed rollout);
* ``run``: a SHA-256 of the ``metrics.csv`` rows (all columns but ``wall_seconds``) and of the
  last checkpoint's arrays after a 2,000-step ``diffmaxent.train`` run (MaxEntDP also on
  MultiGoal-v0 with its ``cpu`` preset).

Run it before and after a change and compare the two files (bitwise on the same CPU)::

    python benchmarks/fingerprint.py before.json
    python benchmarks/fingerprint.py after.json
    python benchmarks/fingerprint.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

import diffmaxent
from diffmaxent.registry import make_agent

# One width for actor and critics keeps the agents tiny; both spellings of the field are listed
# so that the script runs on code from before and after `hidden_dims` was split.
WIDTHS = {"hidden_dims": "32,32", "actor_hidden_dims": "32,32", "critic_hidden_dims": "32,32"}
SMALL = {"batch_size": 32, "learning_starts": 100, "eval_every": 500, "eval_episodes": 2}
TINY = {
    "sac": {},
    "maxentdp": {
        "num_qne_samples": 8,
        "num_diffusion_steps": 3,
        "num_logprob_levels": 3,
        "num_logprob_samples": 2,
        "eval_candidates": 3,
    },
    "dime": {"num_diffusion_steps": 3, "time_dim": 16, "num_frequencies": 8, "num_atoms": 11},
    "crossq": {"num_atoms": 11},
    "ppo": {"num_envs": 2, "rollout_steps": 16, "epochs": 2},
    "diffppo": {"num_envs": 2, "rollout_steps": 8, "epochs": 2, "num_diffusion_steps": 2},
    "diffsac": {"num_diffusion_steps": 2},
    "diffwpo": {"num_diffusion_steps": 2},
    "qsm": {"num_diffusion_steps": 2},
    "dipo": {"num_diffusion_steps": 2, "action_gradient_steps": 2},
    "qvpo": {
        "num_diffusion_steps": 2,
        "num_train_samples": 4,
        "target_candidates": 2,
        "behaviour_candidates": 2,
        "eval_candidates": 3,
    },
    "dacer": {
        "num_diffusion_steps": 2,
        "entropy_states": 4,
        "entropy_samples": 16,
        "gmm_iterations": 5,
    },
    "td3": {},
    "bro": {"num_quantiles": 8},
    "meow": {},
}


def _accepted(algo: str) -> set[str]:
    config = diffmaxent.resolve_config(algo, "Pendulum-v1")
    return {f.name for part in (config.agent, config.loop) for f in dataclasses.fields(part)}


def overrides(algo: str, extra: dict | None = None) -> dict:
    names = _accepted(algo)
    values = {**WIDTHS, **SMALL, **TINY[algo], **(extra or {})}
    return {k: v for k, v in values.items() if k in names}


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        h.update(str(array.dtype).encode() + str(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _is_on_policy(algo: str) -> bool:
    return "num_envs" in _accepted(algo)


def gradient_steps(algo: str) -> dict:
    config = diffmaxent.resolve_config(
        algo, "Pendulum-v1", overrides=overrides(algo, {"updates_per_step": 2})
    )
    env = diffmaxent.make_env("Pendulum-v1", seed=0)
    agent = make_agent(config, env.env_spec)
    state = agent.init(jax.random.PRNGKey(0))
    if _is_on_policy(algo):
        source = _rollout_source(agent, state, config)
    else:
        source = _replay_source(env)
    rng = np.random.default_rng(1)
    all_metrics = []
    for i in range(4):
        batches = source(rng)
        state, metrics = agent.update(state, batches, jax.random.PRNGKey(i))
        all_metrics.append({k: np.asarray(v) for k, v in sorted(metrics.items())})
    leaves = jax.tree_util.tree_leaves(state)
    return {
        "state": _digest(leaves),
        "metrics": _digest([v for m in all_metrics for v in m.values()]),
        "metric_names": sorted(all_metrics[0]),
        "first_metrics": {k: float(v) for k, v in all_metrics[0].items()},
    }


def _replay_source(env):
    from diffmaxent.buffer import ReplayBuffer

    buffer = ReplayBuffer(500, env.env_spec.obs_dim, env.env_spec.action_dim)
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(300):
        action = rng.uniform(-1, 1, env.env_spec.action_dim).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return lambda rng: buffer.sample(rng, SMALL["batch_size"], 2)


def _rollout_source(agent, state, config):
    try:
        from diffmaxent.loops.rollout import collect_rollout, make_vector_env
    except ImportError:  # before the loops were split
        from diffmaxent.onpolicy import collect_rollout, make_vector_env

    envs = make_vector_env("Pendulum-v1", config.loop.num_envs, seed=0)
    obs, _ = envs.reset()
    rollout = collect_rollout(
        agent, state, envs, np.asarray(obs), jax.random.PRNGKey(1), config.loop.rollout_steps
    )[0]
    envs.close()
    return lambda rng: rollout


def run(algo: str, env: str, preset: str, directory: Path) -> dict:
    out = directory / f"{algo}-{env}"
    diffmaxent.train(
        algo,
        env,
        steps=2_000,
        seed=0,
        out=out,
        preset=preset,
        overrides=overrides(algo),
        progress=False,
    )
    with (out / "metrics.csv").open() as f:
        rows = [{k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(f)]
    last = sorted((out / "checkpoints").glob("step_*"))[-1]
    with np.load(last / "state.npz") as data:
        arrays = [data[name] for name in sorted(data.files)]
    return {
        "rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
        "final_row": rows[-1],
        "checkpoint": last.name,
        "state": _digest(arrays),
    }


def fingerprint() -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in diffmaxent.ALGOS:
            print(f"{algo} ...", file=sys.stderr, flush=True)
            result[algo] = {
                "gradient_steps": gradient_steps(algo),
                "run": run(algo, "Pendulum-v1", "cpu", Path(tmp)),
            }
        result["maxentdp"]["run_multigoal"] = run("maxentdp", "MultiGoal-v0", "cpu", Path(tmp))
    return result


def compare(before: dict, after: dict) -> int:
    differences = 0
    for algo in sorted(set(before) | set(after)):
        for part in sorted(set(before.get(algo, {})) | set(after.get(algo, {}))):
            old, new = before.get(algo, {}).get(part), after.get(algo, {}).get(part)
            same = old == new
            differences += not same
            print(f"{algo:10s} {part:15s} {'identical' if same else 'DIFFERENT'}")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="output file, or two files with --compare")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.paths)
        return compare(before, after)
    Path(args.paths[0]).write_text(json.dumps(fingerprint(), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

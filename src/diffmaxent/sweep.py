"""Sweeps on Ray Tune: a grid or random search over algorithms, envs, presets, seeds and
hyperparameters, each trial an ordinary run directory under the sweep directory.

A spec (YAML)::

    algo: sac                      # or a list
    env: Pendulum-v1               # or a list
    preset: cpu                    # or a list (default cpu)
    steps: 1500
    seeds: [0, 1]                  # or "0-4", or one integer
    overrides: {learning_starts: 300}   # fixed for every trial
    grid: {actor_lr: [0.0003, 0.001]}   # every combination, times every seed
    # or, the random-search twin of grid:
    # random:
    #   samples: 4                 # parameter draws, each times every seed
    #   seed: 0                    # of the draws (default 0): a re-run draws the same trials
    #   actor_lr: {loguniform: [0.0001, 0.001]}
    #   tau: {uniform: [0.001, 0.01]}
    #   batch_size: {choice: [64, 128]}

The trials are expanded here, deterministically, so that a re-run of an interrupted sweep finds
the same trial names: a finished trial (status ``complete``) is skipped, an interrupted one
resumes from its newest intact checkpoint, one with no checkpoint yet starts again. Every trial
is resolved (algo, env, preset, hyperparameter names and values) before Ray starts: a bad spec
ends with one line and exit status 2 and no trial runs.

Ray Tune runs the trials as function trainables, one CPU each (``--max-concurrent`` caps how many
run at once), with one XLA thread per trial so that trials do not oversubscribe the cores. With
``--gpus-per-trial F`` each trial asks for a fraction F of a GPU, and JAX is told not to
preallocate GPU memory (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), else the first trial would take
75 % of it. Locally the sweep starts and stops its own Ray instance; with ``--address`` it joins
an existing cluster (``auto`` or ``ray://HOST:PORT``), whose workers must see the sweep
directory (a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from diffmaxent import api, checkpoint, runs
from diffmaxent.envs import make_env
from diffmaxent.errors import UsageError

SWEEP_FILE = "sweep.json"
TUNE_DIR = "tune"  # Ray Tune's own experiment state
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
SPEC_KEYS = {"algo", "env", "preset", "steps", "seeds", "overrides", "grid", "random"}
# One XLA thread per trial: trials are processes side by side on the machine's cores.
TRIAL_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a sweep."""

    name: str  # its run directory's name under the sweep directory
    algo: str
    env: str
    preset: str
    seed: int
    steps: int
    overrides: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_spec(path: Path) -> dict[str, Any]:
    """The YAML spec at ``path`` as a mapping.

    Raises:
        UsageError: unreadable, malformed YAML, or not a mapping.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(
            f"cannot read sweep spec {str(path)!r}: {runs.error_reason(error)}"
        ) from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or "malformed"
        raise UsageError(f"sweep spec {str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"sweep spec {str(path)!r} must be a mapping (algo, env, steps, ...)")
    return spec


def expand(spec: Mapping[str, Any]) -> list[Trial]:
    """Every trial of the spec, each resolved against the registry and the env factory.

    Raises:
        UsageError: an unknown key, algo, preset, env or hyperparameter, or a bad value.
    """
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UsageError(
            f"unknown sweep key {unknown[0]!r}; accepted: {', '.join(sorted(SPEC_KEYS))}"
        )
    for required in ("algo", "env", "steps"):
        if required not in spec:
            raise UsageError(f"the sweep spec needs {required!r}")
    algos = _names(spec["algo"], "algo")
    envs = _names(spec["env"], "env")
    presets = _names(spec.get("preset", api.DEFAULT_PRESET), "preset")
    steps = spec["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    seeds = _seeds(spec.get("seeds", [0]))
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UsageError("overrides must be a mapping of hyperparameter: value")
    if "grid" in spec and "random" in spec:
        raise UsageError("give grid or random, not both")
    variations = _grid(spec["grid"]) if "grid" in spec else _random(spec.get("random"))
    trials = []
    for algo, env, preset, variation in itertools.product(algos, envs, presets, variations):
        values = {**overrides, **variation}
        api.resolve_config(algo, env, steps=steps, preset=preset, overrides=values)
        for seed in seeds:
            name = _trial_name(algo, env, preset, variation, seed)
            trials.append(Trial(name, algo, env, preset, seed, steps, values))
    for env in envs:
        _check_env(env)
    return trials


def _names(value: Any, key: str) -> list[str]:
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise UsageError(f"{key} must be a name or a list of names, got {value!r}")
    return names


def _seeds(value: Any) -> list[int]:
    if isinstance(value, str):
        return api.parse_seeds(value)
    return api.check_seeds([value] if isinstance(value, int) else value)


def _grid(grid: Any) -> list[dict[str, Any]]:
    if not isinstance(grid, dict) or not grid:
        raise UsageError("grid must map hyperparameter names to lists of values")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"grid: {name} needs a non-empty list of values, got {values!r}")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _random(random: Any) -> list[dict[str, Any]]:
    if random is None:
        return [{}]
    if not isinstance(random, dict):
        raise UsageError("random must map samples, seed and hyperparameter distributions")
    samples = random.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UsageError(f"random: samples must be a positive integer, got {samples!r}")
    draw_seed = random.get("seed", 0)
    if isinstance(draw_seed, bool) or not isinstance(draw_seed, int) or draw_seed < 0:
        raise UsageError(f"random: seed must be an integer >= 0, got {draw_seed!r}")
    spaces = {k: v for k, v in random.items() if k not in ("samples", "seed")}
    if not spaces:
        raise UsageError("random: give at least one hyperparameter distribution")
    for name, space in spaces.items():
        _check_distribution(name, space)
    rng = np.random.default_rng(draw_seed)
    return [{name: _draw(rng, space) for name, space in spaces.items()} for _ in range(samples)]


def _check_distribution(name: str, space: Any) -> None:
    if not isinstance(space, dict) or len(space) != 1 or next(iter(space)) not in DISTRIBUTIONS:
        raise UsageError(
            f"random: {name} must be one of {{{', '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}"
            f", got {space!r}"
        )
    ((kind, arguments),) = space.items()
    if kind == "choice":
        if not isinstance(arguments, list) or not arguments:
            raise UsageError(f"random: {name} choice needs a non-empty list")
        return
    if (
        not isinstance(arguments, list)
        or len(arguments) != 2
        or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arguments)
        or not arguments[0] < arguments[1]
    ):
        raise UsageError(
            f"random: {name} {kind} needs [low, high] with low < high, got {arguments!r}"
        )
    if kind == "loguniform" and arguments[0] <= 0:
        raise UsageError(f"random: {name} loguniform needs low > 0, got {arguments[0]!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in arguments):
        raise UsageError(f"random: {name} randint needs integer bounds, got {arguments!r}")


def _draw(rng: np.random.Generator, space: dict[str, Any]) -> Any:
    ((kind, arguments),) = space.items()
    if kind == "choice":
        return arguments[int(rng.integers(len(arguments)))]
    low, high = arguments
    if kind == "uniform":
        return float(rng.uniform(low, high))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return int(rng.integers(low, high))  # randint: high excluded


def _trial_name(algo: str, env: str, preset: str, variation: Mapping[str, Any], seed: int) -> str:
    parts = [algo, env, preset, *(f"{k}={_short(v)}" for k, v in variation.items()), f"seed{seed}"]
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", "-".join(parts))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _check_env(env: str) -> None:
    make_env(env, seed=0).close()


# --- running ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    finished: list[str]  # trials trained to the end by this call
    skipped: list[str]  # trials that were already complete
    failed: dict[str, str]  # trial name -> error


def default_sweep_directory(spec_path: Path) -> Path:
    """``runs/sweep-<spec file stem>``: the same command finds its sweep again."""
    return Path("runs") / f"sweep-{Path(spec_path).stem}"


def run_sweep(
    spec_path: str | Path,
    *,
    out: str | Path | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    gpus_per_trial: float = 0.0,
) -> SweepResult:
    """Run (or continue) the sweep of ``spec_path`` in ``out`` (mirrors ``diffmaxent sweep``).

    Raises:
        UsageError: a bad spec or option, a sweep directory holding another sweep, or Ray not
            installed; nothing has run then.
    """
    spec_path = Path(spec_path)
    trials = expand(read_spec(spec_path))
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or max_concurrent < 1):
        raise UsageError(f"--max-concurrent must be a positive integer, got {max_concurrent!r}")
    if not (isinstance(gpus_per_trial, (int, float)) and 0 <= gpus_per_trial <= 1):
        raise UsageError(f"--gpus-per-trial must be between 0 and 1, got {gpus_per_trial!r}")
    ray, tune = require_ray()
    sweep_dir = Path(out) if out is not None else default_sweep_directory(spec_path)
    record = {"spec": str(spec_path), "trials": [trial.to_json() for trial in trials]}
    _claim(sweep_dir, record)

    pending, skipped = [], []
    for trial in trials:
        (skipped if runs.is_complete(sweep_dir / trial.name) else pending).append(trial)
    result = SweepResult(sweep_dir, [], [trial.name for trial in skipped], {})
    if not pending:
        return result

    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"runtime_env": {"env_vars": TRIAL_ENV}}
        if address is None:
            options.update(include_dashboard=False, num_cpus=os.cpu_count() or 1)
        else:
            options["address"] = address
        try:
            ray.init(**options, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise UsageError(f"cannot start or join Ray: {runs.error_reason(error)}") from None
    try:
        directory = str(sweep_dir.resolve())
        by_index = {index: trial.to_json() for index, trial in enumerate(pending)}
        trainable = tune.with_resources(
            _trial_function(tune, directory, by_index), {"cpu": 1, "gpu": gpus_per_trial}
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(list(by_index))},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=directory, verbose=0, log_to_file=True
            ),
        )
        grid = tuner.fit()
        for outcome in grid:
            name = pending[outcome.config["trial"]].name
            if outcome.error is not None:
                result.failed[name] = runs.error_reason(outcome.error).splitlines()[0][:300]
            else:
                result.finished.append(name)
    finally:
        if started_here:
            ray.shutdown()
    return result


def require_ray() -> tuple[Any, Any]:
    """``(ray, ray.tune)``.

    Raises:
        UsageError: Ray Tune is not installed.
    """
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UsageError("sweep needs Ray Tune: pip install 'diffmaxent[sweep]'") from None
    return ray, tune


def _trial_function(tune: Any, sweep_dir: str, trials: dict[int, dict[str, Any]]):
    """The function trainable: train (or resume) one trial's run directory and report its final
    evaluation return."""

    def train_trial(config: dict[str, Any]) -> None:
        trial = Trial(**trials[config["trial"]])
        run_dir = Path(sweep_dir) / trial.name
        result = _train_or_resume(trial, run_dir)
        tune.report({"eval_return_mean": result.eval_return_mean, "env_step": trial.steps})

    return train_trial


def _train_or_resume(trial: Trial, run_dir: Path) -> Any:
    if runs.holds_run(run_dir) and checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR):
        return api.train(resume=run_dir, steps=trial.steps, progress=False)
    return api.train(
        trial.algo,
        trial.env,
        steps=trial.steps,
        seed=trial.seed,
        out=run_dir,
        preset=trial.preset,
        overrides=trial.overrides,
        force=True,  # a run killed before its first checkpoint starts again
        progress=False,
    )


def _claim(sweep_dir: Path, record: dict[str, Any]) -> None:
    """Write ``sweep.json``, or check that the directory holds this same sweep."""
    path = sweep_dir / SWEEP_FILE
    record = json.loads(json.dumps(record))  # as it reads back: lists, not tuples
    if path.exists():
        held = runs.read_json(path)
        if held.get("trials") != record["trials"]:
            raise UsageError(
                f"sweep directory {str(sweep_dir)!r} holds another sweep (its sweep.json lists "
                "other trials); choose another --out"
            )
        return
    if sweep_dir.exists() and (not sweep_dir.is_dir() or any(sweep_dir.iterdir())):
        raise UsageError(f"--out {str(sweep_dir)!r} exists and is not a sweep directory")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(path, record)


def summary_lines(result: SweepResult) -> list[str]:
    """What ``diffmaxent sweep`` prints at the end."""
    lines = [
        f"sweep {result.sweep_dir}: {len(result.finished)} trials trained, "
        f"{len(result.skipped)} already complete, {len(result.failed)} failed"
    ]
    lines += [f"  failed {name}: {error}" for name, error in sorted(result.failed.items())]
    return lines

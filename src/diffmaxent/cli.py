"""``diffmaxent``: train (or resume), evaluate, benchmark, list algorithms and presets.

Every bad input ends with one line on stderr (``diffmaxent: error: ...``) and exit status 2;
a diverged run exits 3, a run stopped by SIGINT / SIGTERM 130 / 143 (:mod:`diffmaxent.errors`).
Warnings are one line each (``diffmaxent: warning: ...``).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from diffmaxent import api, reproduce, results, runs, sweep
from diffmaxent.bench import run_bench
from diffmaxent.config import parse_assignments
from diffmaxent.errors import (
    DiffmaxentWarning,
    TrainingDiverged,
    TrainingInterrupted,
    UsageError,
)
from diffmaxent.loops.bookkeeping import EVAL_SEED_OFFSET, GroupResult, TrainResult, evaluate
from diffmaxent.registry import ALGOS, get_algo
from diffmaxent.video import record_video

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:

    parser = _Parser(prog="diffmaxent", description="Diffusion policies for MaxEnt RL.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train an agent and write a run directory")
    train.add_argument(
        "--algo", default=api.DEFAULT_ALGO, help="algorithm (see `algos`; default %(default)s)"
    )
    train.add_argument(
        "--env",
        default=api.DEFAULT_ENV,
        help="env id: a Gymnasium id, dmc:DOMAIN-TASK or myo:ENV_ID (default %(default)s)",
    )
    train.add_argument(
        "--steps",
        default=None,
        type=_int("--steps"),
        help=f"env steps (default {api.DEFAULT_STEPS}; with --resume: a new total)",
    )
    train.add_argument("--seed", default=None, type=_int("--seed"), help="random seed (default 0)")
    train.add_argument(
        "--seeds",
        default=None,
        metavar="LIST",
        help="train several seeds together in one process, e.g. 0-4 or 0,3,7; --out is then a "
        "group directory with a run directory seed<N> per seed (default: one seed, --seed)",
    )
    train.add_argument(
        "--seed-batching",
        default="auto",
        choices=("auto", "vmap", "map"),
        help="with --seeds: vmap (batched kernels, for GPUs), map (seed after seed in one "
        "compiled call, faster on CPU) or auto: map on CPU, vmap on GPU (default %(default)s)",
    )
    train.add_argument(
        "--out",
        default=None,
        help="run directory (default runs/<algo>-<env>-seed<seed>-<time>; with --seeds "
        "runs/<algo>-<env>-seeds<LIST>-<time>)",
    )
    train.add_argument(
        "--preset",
        default=api.DEFAULT_PRESET,
        help="hyperparameter preset (see `presets ALGO`; default %(default)s)",
    )
    train.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a hyperparameter (repeatable; default: the preset's values)",
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="replace a run already in --out (default: refuse to)",
    )
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run from its newest intact checkpoint, with --steps to a new total "
        "(default: start a new run)",
    )
    train.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (pip install 'diffmaxent[wandb]'; WANDB_MODE=offline "
        "works without a network) (default: TensorBoard event files only)",
    )
    _add_quiet(train)

    evaluate = commands.add_parser("eval", help="evaluate the last checkpoint of a run")
    evaluate.add_argument("run_dir", help="a run directory written by `train`")
    evaluate.add_argument(
        "--episodes", default=10, type=_int("--episodes"), help="episodes (default %(default)s)"
    )
    evaluate.add_argument(
        "--seed",
        default=0,
        type=_int("--seed"),
        help="seed of the evaluation env and the policy's noise (default %(default)s)",
    )
    mode = evaluate.add_mutually_exclusive_group()
    mode.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        default=None,
        help="deterministic actions (default: as the run evaluated)",
    )
    mode.add_argument(
        "--stochastic",
        dest="deterministic",
        action="store_false",
        help="sampled actions (default: as the run evaluated)",
    )
    evaluate.add_argument(
        "--video",
        action="store_true",
        help="render the episodes offscreen into RUN_DIR/videos/step<N>-seed<S>.mp4 "
        "(default: no video)",
    )

    bench = commands.add_parser("bench", help="time one update and one env step of an agent")
    bench.add_argument(
        "--algo", default=api.DEFAULT_ALGO, help="algorithm (see `algos`; default %(default)s)"
    )
    bench.add_argument("--env", default=api.DEFAULT_ENV, help="env id (default %(default)s)")
    bench.add_argument(
        "--preset", default=api.DEFAULT_PRESET, help="hyperparameter preset (default %(default)s)"
    )
    bench.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a hyperparameter (repeatable; default: the preset's values)",
    )
    bench.add_argument(
        "--repeats",
        default=10,
        type=_int("--repeats"),
        help="timed calls per measurement, the median reported (default %(default)s)",
    )

    commands.add_parser("algos", help="list the algorithms")
    presets = commands.add_parser(
        "presets", help="every value each preset of an algorithm sets, and what it means"
    )
    presets.add_argument("algo", help="an algorithm (see `algos`)")
    presets.add_argument(
        "--env",
        default=None,
        help="show the values each preset sets on this env id (default: on any env)",
    )

    plot = commands.add_parser(
        "plot", help="learning curves of runs, groups and sweeps: IQM across seeds, 95%% CI"
    )
    plot.add_argument("paths", nargs="+", metavar="RUN_OR_GROUP", help="run, group or sweep dirs")
    plot.add_argument(
        "--out", required=True, help="figure file, .png, .pdf or .svg (required: no default)"
    )
    plot.add_argument(
        "--x",
        default="steps",
        choices=("steps", "time"),
        help="x axis: env steps, or wall time (the runs' mean at each step) (default %(default)s)",
    )
    plot.add_argument(
        "--trajectories",
        action="store_true",
        help="instead of curves, each MultiGoal-v0 run's sampled trajectories titled with the "
        "episodes ending at each goal, a column per algorithm in the order given, a row per seed "
        "(the MaxEntDP paper's Fig. 1) (default: curves)",
    )
    _add_reps(plot)

    compare = commands.add_parser(
        "compare", help="final return per env and algorithm: IQM with 95%% CI, mean ± std"
    )
    compare.add_argument(
        "paths", nargs="+", metavar="RUN_OR_GROUP", help="run, group or sweep directories"
    )
    compare.add_argument(
        "--format",
        default="markdown",
        choices=("markdown", "csv"),
        help="markdown (a table per env) or csv (default %(default)s)",
    )
    _add_reps(compare)

    sweep_parser = commands.add_parser(
        "sweep", help="a grid or random search on Ray Tune, each trial a run directory"
    )
    sweep_parser.add_argument("spec", metavar="SPEC.yaml", help="the sweep spec (see README)")
    sweep_parser.add_argument(
        "--out",
        default=None,
        help="sweep directory; the same command continues it (default runs/sweep-<spec name>)",
    )
    sweep_parser.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster: auto or ray://HOST:PORT (default: start a local Ray)",
    )
    sweep_parser.add_argument(
        "--max-concurrent",
        default=None,
        type=_int("--max-concurrent"),
        help="trials running at once (default: as many as there are CPUs)",
    )
    sweep_parser.add_argument(
        "--gpus-per-trial",
        default=0.0,
        type=float,
        help="fraction of a GPU per trial, e.g. 0.25 (default %(default)s)",
    )
    reproduce_parser = commands.add_parser(
        "reproduce",
        help="run a published protocol (tasks, steps, presets, seeds) and compare with the paper",
    )
    reproduce_parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="the protocol: maxentdp-gym, dime-dmc, dime-gym or multigoal (--list shows them)",
    )
    reproduce_parser.add_argument(
        "--list", action="store_true", help="list the protocols and exit (default: off)"
    )
    reproduce_parser.add_argument(
        "--seeds",
        default=None,
        type=_int("--seeds"),
        help="seeds per algorithm and env (default: as many as the paper used)",
    )
    reproduce_parser.add_argument(
        "--scale",
        default=1.0,
        type=float,
        help="fraction of the env steps, random steps and evaluation interval, e.g. 0.01 for "
        "a smoke run of the protocol (default %(default)s: the published protocol)",
    )
    reproduce_parser.add_argument(
        "--out",
        default=None,
        help="protocol directory; the same command continues it (default runs/reproduce-NAME)",
    )
    reproduce_parser.add_argument(
        "--env",
        action="append",
        default=None,
        dest="envs",
        metavar="ENV",
        help="only the protocol's runs on this env; repeatable (default: every env)",
    )
    _add_quiet(reproduce_parser)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress output (default: a bar on a terminal, else a line per evaluation)",
    )


def _add_reps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reps",
        default=2_000,
        type=_int("--reps"),
        help="bootstrap resamples of the 95%% interval (default %(default)s)",
    )


def _int(flag: str):
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None

    return parse


def _cmd_train(args: argparse.Namespace) -> int:

    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    overrides = parse_assignments(args.assignments)
    if args.seed is not None and args.seeds is not None:
        raise UsageError("give --seed or --seeds, not both")
    seeds = api.parse_seeds(args.seeds) if args.seeds is not None else None
    result = api.train(
        args.algo,
        args.env,
        steps=args.steps,
        seed=args.seed if args.seed is not None else 0,
        seeds=seeds,
        out=args.out,
        preset=args.preset,
        overrides=overrides,
        force=args.force,
        progress=False if args.quiet else None,
        resume=args.resume,
        wandb=args.wandb,
        seed_batching=args.seed_batching,
    )
    if isinstance(result, GroupResult):
        for run in result.runs:
            seed = runs.read_json(run.run_dir / runs.CONFIG_FILE)["seed"]
            print(f"seed {seed}: {_final_line(run)}")
        means = result.eval_return_means
        print(
            f"{len(means)} seeds: final evaluation return mean {np.mean(means):.2f} "
            f"(min {min(means):.2f}, max {max(means):.2f}); group directory {result.group_dir}"
        )
    else:
        print(_final_line(result))
    return 0


def _final_line(result: TrainResult) -> str:
    return (
        f"final evaluation return {result.eval_return_mean:.2f} ± {result.eval_return_std:.2f}; "
        + (f"{result.headline}; " if result.headline else "")
        + f"run directory {result.run_dir}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:

    if args.episodes < 1:
        raise UsageError(f"--episodes must be a positive integer, got {args.episodes}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    loaded = api.load(args.run_dir)
    deterministic = (
        loaded.config.loop.eval_deterministic if args.deterministic is None else args.deterministic
    )
    video_note = ""
    if args.video:
        target = Path(args.run_dir) / "videos" / f"step{loaded.env_step}-seed{args.seed}.mp4"
        path, returns, frames = record_video(
            loaded, target, args.episodes, args.seed, deterministic
        )
        video_note = f"; video {path} ({frames} frames)"
    else:
        env = loaded.config.make_env(args.seed + EVAL_SEED_OFFSET)
        returns = evaluate(
            loaded.agent,
            loaded.state,
            env,
            args.episodes,
            jax.random.PRNGKey(args.seed),
            deterministic,
        ).returns
        env.close()
    mode = "deterministic" if deterministic else "stochastic"
    print(
        f"{loaded.config.algo} on {loaded.config.env}, checkpoint at step {loaded.env_step}, "
        f"{args.episodes} {mode} episodes: return {returns.mean():.2f} ± {returns.std():.2f}"
        f"{video_note}"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:

    if args.repeats < 1:
        raise UsageError(f"--repeats must be a positive integer, got {args.repeats}")
    result = run_bench(
        args.algo,
        args.env,
        preset=args.preset,
        overrides=parse_assignments(args.assignments),
        repeats=args.repeats,
    )
    print("\n".join(result.lines()))
    return 0


def _cmd_algos(args: argparse.Namespace) -> int:

    width = max(len(name) for name in ALGOS)
    for name, spec in ALGOS.items():
        print(f"{name:<{width}}  {spec.description}  (presets: {', '.join(spec.presets)})")
    return 0


def _setting(value) -> str:
    """A value as ``--set`` accepts it (tuples as ``256,256``)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _cmd_plot(args: argparse.Namespace) -> int:
    if args.reps < 1:
        raise UsageError(f"--reps must be a positive integer, got {args.reps}")
    records = results.find_runs(args.paths)
    if args.trajectories:
        results.plot_trajectories(records, Path(args.out))
    else:
        results.plot_curves(results.curves(records, args.x, args.reps), Path(args.out), args.x)
    print(f"{len(records)} runs; figure {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.reps < 1:
        raise UsageError(f"--reps must be a positive integer, got {args.reps}")
    table = results.compare(results.find_runs(args.paths), args.reps)
    sys.stdout.write(results.format_comparison(table, args.format))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    outcome = sweep.run_sweep(
        args.spec,
        out=args.out,
        address=args.address,
        max_concurrent=args.max_concurrent,
        gpus_per_trial=args.gpus_per_trial,
    )
    for line in sweep.summary_lines(outcome):
        print(line)
    return 1 if outcome.failed else 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        for line in reproduce.protocol_lines():
            print(line)
        return 0
    if args.name is None:
        raise UsageError("name a protocol (diffmaxent reproduce --list shows them)")
    progress = False if args.quiet else None
    outcome = reproduce.reproduce(
        args.name,
        seeds=args.seeds,
        scale=args.scale,
        out=args.out,
        progress=progress,
        envs=args.envs,
    )
    sys.stdout.write(outcome.comparison.read_text())
    print(f"comparison {outcome.comparison}; figure {outcome.figure}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:

    spec = get_algo(args.algo)
    rows = api.hyperparameter_table(args.algo, args.env)
    print(f"{spec.name}: {spec.description} ({spec.loop.name} loop)\n")
    print(f"presets (train uses {api.DEFAULT_PRESET} unless --preset names another):")
    for name, preset in spec.presets.items():
        suite = f"{preset.suite} envs" if preset.suite else "any env"
        print(
            textwrap.fill(
                f"{name} [{suite}]: {preset.note}",
                100,
                initial_indent="  ",
                subsequent_indent="      ",
            )
        )
        every = ", ".join(f"{k}={_setting(v)}" for k, v in preset.values.items())
        print(
            textwrap.fill(
                f"every env: {every or '(the defaults)'}",
                100,
                initial_indent="    ",
                subsequent_indent="      ",
            )
        )
        for task, values in preset.per_task.items():
            print(f"    {task}: {', '.join(f'{k}={_setting(v)}' for k, v in values.items())}")
    where = f"on {args.env}" if args.env else "on an env without a per-task entry"
    print(f"\nhyperparameters, the value each preset gives {where} (* = set by the preset):")
    columns = [["name", "type", "default", *spec.presets, "meaning"]]
    for name, type_name, default, help_text in rows:
        cells = [name, type_name, _setting(default)]
        for preset in spec.presets.values():
            values = preset.values_for(args.env) if args.env else preset.values
            cells.append(f"{_setting(values[name])}*" if name in values else _setting(default))
        columns.append([*cells, help_text])
    widths = [max(len(row[i]) for row in columns) for i in range(len(columns[0]) - 1)]
    for row in columns:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  " + "  ".join([*cells, row[-1]]))
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, DiffmaxentWarning):
        print(f"diffmaxent: warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("always", DiffmaxentWarning)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = {
            "train": _cmd_train,
            "eval": _cmd_eval,
            "bench": _cmd_bench,
            "algos": _cmd_algos,
            "presets": _cmd_presets,
            "plot": _cmd_plot,
            "compare": _cmd_compare,
            "sweep": _cmd_sweep,
            "reproduce": _cmd_reproduce,
        }[args.command]
        return handler(args)
    except UsageError as error:
        print(f"diffmaxent: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as stopped:
        print(f"diffmaxent: interrupted by {stopped}", file=sys.stderr)
        return stopped.exit_status
    except TrainingDiverged as stopped:
        print(f"diffmaxent: error: {stopped}", file=sys.stderr)
        return stopped.exit_status
    except OSError as error:
        if isinstance(error, BrokenPipeError):  # output piped into `head` and closed early
            sys.stderr.close()
            return 0
        print(f"diffmaxent: error: {_os_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("diffmaxent: interrupted", file=sys.stderr)
        return 130


def _os_error(error: OSError) -> str:
    """One line for a filesystem error: what failed, on which path."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    path = error.filename if error.filename is not None else ""
    return f"{reason}: {path}" if path else reason


if __name__ == "__main__":
    sys.exit(main())

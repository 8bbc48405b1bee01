"""``diffmaxent reproduce NAME``: run a published protocol and compare with the published numbers.

A protocol (``published.yaml``, shipped with the package) names the runs of a paper's table or
figure: algorithms with their presets, envs, env steps, seeds, the evaluation, and the published
results with their source. ``reproduce`` trains one multi-seed group per algorithm and env under
``OUT``, then writes ``comparison.md`` (ours against published) and a figure: learning curves with
the published mean ± std, or for MultiGoal the sampled trajectories side by side (Fig. 1).

``scale`` multiplies the env steps, the random steps before learning and the evaluation interval
(never below one evaluation per run), so ``--scale 0.01`` runs the same protocol at 1% of its
length. The command is restartable: a group already complete under ``OUT`` is kept as it is, an
unfinished one is resumed, and one with other settings is refused rather than overwritten.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from diffmaxent import api, results, runs
from diffmaxent.errors import UsageError

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
COMPARISON_FILE = "comparison.md"
CURVES_FILE = "curves.png"
TRAJECTORIES_FILE = "trajectories.png"
METRICS = ("return", "goals")


@dataclasses.dataclass(frozen=True)
class Published:
    """One published result: a final return (mean ± std over seeds at ``step``) or, for
    ``goals``, the number of goals the paper's figure shows reached."""

    algo: str
    env: str
    mean: float | None = None
    std: float | None = None
    seeds: int | None = None
    step: int | None = None
    goals: int | None = None


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    runs: tuple[tuple[str, str, str], ...]  # (algo, preset, env)
    steps: int
    seeds: int
    evaluation: str
    metric: str
    published: tuple[Published, ...]
    source: str
    missing: str = ""  # why there is no published number, when there is none
    min_goal_share: float = results.GOAL_SHARE

    def published_for(self, algo: str, env: str) -> Published | None:
        return next((p for p in self.published if (p.algo, p.env) == (algo, env)), None)


def load_protocols(path: Path = PUBLISHED_FILE) -> dict[str, Protocol]:
    """Every protocol of the data file, validated.

    Raises:
        DamagedFileError: the file is unreadable or a protocol lacks a field or has a bad value.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise runs.DamagedFileError(f"{path}: {runs.error_reason(error)}") from None
    if not isinstance(data, dict):
        raise runs.DamagedFileError(f"{path} does not map protocol names to protocols")
    return {name: _protocol(name, entry, path) for name, entry in data.items()}


def _protocol(name: str, entry: Any, path: Path) -> Protocol:
    try:
        planned = tuple(
            (str(run["algo"]), str(run["preset"]), str(env))
            for run in entry["runs"]
            for env in run["envs"]
        )
        published = tuple(Published(**item) for item in entry.get("published") or ())
        protocol = Protocol(
            name=name,
            title=str(entry["title"]),
            runs=planned,
            steps=int(entry["steps"]),
            seeds=int(entry["seeds"]),
            evaluation=str(entry["evaluation"]),
            metric=str(entry["metric"]),
            published=published,
            source=str(entry["source"]),
            missing=str(entry.get("missing", "")),
            min_goal_share=float(entry.get("min_goal_share", results.GOAL_SHARE)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise runs.DamagedFileError(
            f"{path}: protocol {name!r} is malformed ({type(error).__name__}: {error})"
        ) from None
    if protocol.metric not in METRICS or protocol.steps < 1 or protocol.seeds < 1:
        raise runs.DamagedFileError(
            f"{path}: protocol {name!r} needs metric in {METRICS}, steps >= 1 and seeds >= 1"
        )
    return protocol


def get_protocol(name: str, path: Path = PUBLISHED_FILE) -> Protocol:
    protocols = load_protocols(path)
    if name not in protocols:
        raise UsageError(f"unknown protocol {name!r}; accepted: {', '.join(protocols)}")
    return protocols[name]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One multi-seed group of a protocol at a scale."""

    algo: str
    preset: str
    env: str
    steps: int
    seeds: tuple[int, ...]
    overrides: Mapping[str, int]
    group_dir: Path


def plan(
    protocol: Protocol,
    out: Path,
    seeds: int | None = None,
    scale: float = 1.0,
    envs: Sequence[str] | None = None,
) -> list[PlannedRun]:
    """The groups ``reproduce`` trains, each with its steps and its scaled loop settings; with
    ``envs``, only the protocol's runs on those envs.

    Raises:
        UsageError: a bad ``seeds``, ``scale`` or env, or a protocol run naming an unknown algo
            or preset.
    """
    protocol_envs = list(dict.fromkeys(env for _, _, env in protocol.runs))
    unknown = [env for env in envs or () if env not in protocol_envs]
    if unknown:
        raise UsageError(
            f"{protocol.name} has no env {unknown[0]!r}; its envs: {', '.join(protocol_envs)}"
        )
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 < scale <= 1):
        raise UsageError(f"--scale must be a number in (0, 1], got {scale!r}")
    count = protocol.seeds if seeds is None else seeds
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"--seeds must be a positive integer, got {count!r}")
    steps = max(1, round(protocol.steps * scale))
    planned = []
    for algo, preset, env in protocol.runs:
        if envs and env not in envs:
            continue
        loop = api.resolve_config(algo, env, steps=steps, preset=preset).loop
        overrides = {"eval_every": min(steps, max(1, round(loop.eval_every * scale)))}
        if hasattr(loop, "learning_starts"):
            overrides["learning_starts"] = round(loop.learning_starts * scale)
        name = f"{algo}-{env.replace('/', '-').replace(':', '-')}"
        planned.append(
            PlannedRun(algo, preset, env, steps, tuple(range(count)), overrides, out / name)
        )
    return planned


@dataclasses.dataclass(frozen=True)
class ReproduceResult:
    out: Path
    comparison: Path
    figure: Path
    trained: list[Path]  # groups trained or resumed by this call
    kept: list[Path]  # groups already complete, left as they were


def reproduce(
    name: str,
    seeds: int | None = None,
    scale: float = 1.0,
    out: str | Path | None = None,
    progress: bool | None = None,
    published_file: Path = PUBLISHED_FILE,
    envs: Sequence[str] | None = None,
) -> ReproduceResult:
    """Run protocol ``name`` (see the module docstring) and write its comparison and figure.

    Args:
        seeds: seeds per group (default: the paper's count).
        scale: fraction of the protocol's env steps, random steps and evaluation interval.
        out: the protocol's directory (default ``runs/reproduce-<name>``); running the same
            command again continues it.
        envs: only the protocol's runs on these envs (default: all of them).

    Raises:
        UsageError: bad arguments, or ``out`` holding a group of other settings.
    """
    protocol = get_protocol(name, published_file)
    out = Path(out) if out is not None else Path("runs") / f"reproduce-{name}"
    planned = plan(protocol, out, seeds, scale, envs)
    for run in planned:
        _check_existing(run)
    trained, kept = [], []
    for run in planned:
        if _complete(run):
            kept.append(run.group_dir)
            continue
        if runs.holds_group(run.group_dir):
            api.train(resume=run.group_dir, progress=progress)
        else:
            api.train(
                run.algo,
                run.env,
                steps=run.steps,
                seeds=list(run.seeds),
                out=run.group_dir,
                preset=run.preset,
                overrides=run.overrides,
                progress=progress,
            )
        trained.append(run.group_dir)
    comparison = out / COMPARISON_FILE
    runs.write_text(comparison, comparison_markdown(protocol, planned, scale))
    if protocol.metric == "goals":
        figure = out / TRAJECTORIES_FILE
        records = results.find_runs([run.group_dir for run in planned])
        results.plot_trajectories(records, figure)
    else:
        figure = out / CURVES_FILE
        plot_against_published(protocol, planned, figure)
    return ReproduceResult(out, comparison, figure, trained, kept)


def _group_settings(run: PlannedRun) -> dict[str, Any]:
    return {"algo": run.algo, "env": run.env, "preset": run.preset, "seeds": list(run.seeds)}


def _check_existing(run: PlannedRun) -> None:
    """Refuse a group directory that holds something other than this run's group."""
    directory = run.group_dir
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{str(directory)!r} exists and is not a directory")
    if not runs.holds_group(directory):
        if runs.holds_run(directory):
            raise UsageError(f"{str(directory)!r} holds a run, not this protocol's group")
        return
    group = runs.read_json(directory / runs.GROUP_FILE)
    recorded = {key: group.get(key) for key in ("algo", "env", "preset", "seeds")}
    if recorded != _group_settings(run) or group.get("steps") != run.steps:
        raise UsageError(
            f"{str(directory)!r} holds a group with other settings ({recorded}, "
            f"{group.get('steps')} steps); give another --out or remove it"
        )


def _complete(run: PlannedRun) -> bool:
    return runs.holds_group(run.group_dir) and all(
        runs.is_complete(member) for member in runs.group_runs(run.group_dir)
    )


# --- comparison -----------------------------------------------------------------------------


def comparison_markdown(protocol: Protocol, planned: Sequence[PlannedRun], scale: float) -> str:
    lines = [
        f"# {protocol.title}",
        "",
        f"Protocol `{protocol.name}` at scale {scale:g}: {planned[0].steps} env steps per run "
        f"(published: {protocol.steps}), {len(planned[0].seeds)} seeds "
        f"(published: {protocol.seeds}). Evaluation: {protocol.evaluation}.",
        "",
        f"Published numbers: {protocol.source}.",
    ]
    if protocol.missing:
        lines += ["", protocol.missing]
    lines.append("")
    if protocol.metric == "goals":
        lines += _goal_rows(protocol, planned)
    else:
        lines += _return_rows(protocol, planned)
    if scale < 1:
        lines += [
            "",
            f"At scale {scale:g} these runs are a smoke test of the protocol, not a "
            "reproduction: compare with the published numbers only at scale 1.",
        ]
    return "\n".join(lines) + "\n"


def _return_rows(protocol: Protocol, planned: Sequence[PlannedRun]) -> list[str]:
    rows = [
        "| env | algo (preset) | seeds | env steps | ours: mean ± std | ours: IQM [95% CI] "
        "| published: mean ± std (seeds, step) | ours / published |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in planned:
        (row,) = results.compare(results.find_runs([run.group_dir]))
        target = protocol.published_for(run.algo, run.env)
        if target is None or target.mean is None:
            published, ratio = "none", "—"
        else:
            published = (
                f"{target.mean:.1f} ± {target.std:.1f} ({target.seeds}, {target.step})"
                if target.std is not None
                else f"{target.mean:.1f}"
            )
            ratio = f"{row.mean / target.mean:.2f}" if target.mean else "—"
        rows.append(
            f"| {run.env} | {run.algo} ({run.preset}) | {row.seeds} | "
            f"{results.format_steps(row.env_steps)} | {row.mean:.1f} ± {row.std:.1f} | "
            f"{row.iqm:.1f} [{row.iqm_low:.1f}, {row.iqm_high:.1f}] | {published} | {ratio} |"
        )
    return rows


def _goal_rows(protocol: Protocol, planned: Sequence[PlannedRun]) -> list[str]:
    share = f"{protocol.min_goal_share:.0%}"
    rows = [
        f"Goals reached by at least {share} of the sampled episodes, per seed.",
        "",
        "| algo (preset) | env | goals per seed | published |",
        "|---|---|---|---|",
    ]
    for run in planned:
        members = runs.group_runs(run.group_dir)
        reached = [results.goals_reached(member, protocol.min_goal_share) for member in members]
        target = protocol.published_for(run.algo, run.env)
        published = "not in the figure" if target is None else str(target.goals)
        rows.append(
            f"| {run.algo} ({run.preset}) | {run.env} | {', '.join(map(str, reached))} | "
            f"{published} |"
        )
    return rows


def plot_against_published(
    protocol: Protocol, planned: Sequence[PlannedRun], out: Path, reps: int = 2_000
) -> None:
    """One panel per env: each group's IQM curve with its 95% band, and the published mean ±
    std as a point with an error bar at its step (where there is one)."""

    def reference(algo: str, env: str) -> tuple[float, float, float] | None:
        target = protocol.published_for(algo, env)
        if target is None or target.mean is None:
            return None
        return float(target.step or protocol.steps), target.mean, target.std or 0.0

    records = results.find_runs([run.group_dir for run in planned])
    table = results.curves(records, reps=reps)
    results.plot_curves(table, out, reference=reference, title=protocol.title)


def protocol_lines(path: Path = PUBLISHED_FILE) -> list[str]:
    """One line per protocol: its name, title, runs and published source (for ``--list``)."""
    lines = []
    for protocol in load_protocols(path).values():
        envs = sorted({env for _, _, env in protocol.runs})
        algos = sorted({f"{algo} ({preset})" for algo, preset, _ in protocol.runs})
        lines.append(
            f"{protocol.name}: {protocol.title}; {', '.join(algos)} on {', '.join(envs)}; "
            f"{protocol.steps} steps x {protocol.seeds} seeds"
        )
    return lines

"""Reading many runs: find the run directories under runs, groups and sweeps, tabulate their final
returns per env and algorithm, and plot their learning curves.

Scores across seeds are aggregated as the field reports them (:mod:`diffmaxent.stats`): the
interquartile mean (IQM) with a 95 % stratified-bootstrap confidence interval, beside the mean and
standard deviation. A run's final return is the ``eval_return_mean`` of its last evaluated row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffmaxent import runs, stats
from diffmaxent.envs.multigoal import GOAL_POSITIONS
from diffmaxent.errors import UsageError

TRAJECTORIES_FILE = "trajectories.png"
# A MultiGoal goal counts as reached when this share of the sampled episodes end there (the
# MaxEntDP paper's Fig. 1 criterion, as `reproduce multigoal` applies it).
GOAL_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What ``plot`` and ``compare`` read of one run directory."""

    run_dir: Path
    algo: str
    env: str
    preset: str
    seed: int
    status: str
    env_step: np.ndarray  # [evaluations], of the rows with an evaluation
    wall_seconds: np.ndarray  # [evaluations]
    eval_return: np.ndarray  # [evaluations]
    goals_reached: int | None = None  # MultiGoal: goals of >= GOAL_SHARE of the sampled episodes

    @property
    def final_return(self) -> float:
        return float(self.eval_return[-1])


def find_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run directory at or under ``paths`` (runs, groups of seeds, sweeps), each once, in
    path order.

    Raises:
        UsageError: a path is missing, holds no run, or a run's files are damaged or hold no
            evaluation yet.
    """
    if not paths:
        raise UsageError("name at least one run, group or sweep directory")
    found: dict[Path, RunRecord] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise UsageError(f"{str(path)!r} is not a directory")
        directories = [path] if runs.holds_run(path) and not runs.holds_group(path) else []
        if not directories:
            directories = sorted(
                config.parent
                for config in path.rglob(runs.CONFIG_FILE)
                if not runs.holds_group(config.parent)
            )
        if not directories:
            raise UsageError(f"{str(path)!r} holds no run directory")
        for directory in directories:
            resolved = directory.resolve()
            if resolved not in found:
                found[resolved] = read_run(directory)
    return list(found.values())


def read_run(run_dir: Path) -> RunRecord:
    """A run directory's config, status and evaluated ``metrics.csv`` rows.

    Raises:
        UsageError: missing or damaged files, or no evaluation yet.
    """
    config = runs.read_json(run_dir / runs.CONFIG_FILE)
    try:
        algo, env, preset, seed = config["algo"], config["env"], config["preset"], config["seed"]
    except (KeyError, TypeError):
        raise runs.DamagedFileError(f"{run_dir / runs.CONFIG_FILE} is not a run config") from None
    try:
        status = runs.read_json(run_dir / runs.STATUS_FILE).get("status", "unknown")
    except runs.DamagedFileError:
        status = "unknown"
    rows = read_metrics(run_dir / runs.METRICS_FILE)
    evaluated = [row for row in rows if row.get("eval_return_mean") is not None]
    if not evaluated:
        raise UsageError(f"run {str(run_dir)!r} has no evaluation yet")
    column = lambda name: np.array([row[name] for row in evaluated], np.float64)  # noqa: E731
    return RunRecord(
        run_dir,
        str(algo),
        str(env),
        str(preset),
        int(seed),
        str(status),
        column("env_step"),
        column("wall_seconds"),
        column("eval_return_mean"),
        _final_goals_reached(run_dir),
    )


def _final_goals_reached(run_dir: Path) -> int | None:
    """Goals reached by the sampled episodes a finished run's summary records (MultiGoal), or
    None: no summary yet, or one without goal counts (another env).

    Raises:
        DamagedFileError: the summary is unreadable.
    """
    if not (run_dir / runs.SUMMARY_FILE).exists():
        return None
    summary = runs.read_json(run_dir / runs.SUMMARY_FILE)
    if "goal_0" not in (summary.get("stochastic_episodes") or {}):
        return None
    return goals_reached(run_dir, GOAL_SHARE)


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` as rows of floats (a blank cell is None: not measured).

    Raises:
        DamagedFileError: missing, unreadable, or not a metrics file.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise runs.DamagedFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise runs.DamagedFileError(f"{path} is damaged ({runs.error_reason(error)})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "env_step" not in reader.fieldnames:
        raise runs.DamagedFileError(f"{path} is not a metrics file (no env_step column)")
    rows = []
    for number, row in enumerate(reader, start=2):
        try:
            rows.append({k: float(v) if v not in ("", None) else None for k, v in row.items()})
        except (TypeError, ValueError):
            raise runs.DamagedFileError(f"{path} line {number} is damaged") from None
    return rows


# --- compare ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One algorithm on one env, over its runs."""

    env: str
    algo: str
    seeds: int
    env_steps: tuple[int, int]  # the runs' fewest and most steps evaluated
    iqm: float
    iqm_low: float
    iqm_high: float
    mean: float
    std: float
    wall_seconds: float  # mean over the runs
    ms_per_env_step: float  # mean over the runs of wall time / env steps, in milliseconds
    goals_reached: tuple[int, ...] | None  # per run (MultiGoal), None where a run has no count


def compare(records: Sequence[RunRecord], reps: int = 2_000) -> list[Comparison]:
    """Final returns per env and algorithm (envs, then algorithms, in alphabetical order)."""
    by_key: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        by_key.setdefault((record.env, record.algo), []).append(record)
    table = []
    for (env, algo), group in sorted(by_key.items()):
        finals = np.array([record.final_return for record in group])
        low, high = stats.stratified_bootstrap_ci(finals[:, None], reps=reps)
        steps = [int(record.env_step[-1]) for record in group]
        table.append(
            Comparison(
                env,
                algo,
                len(group),
                (min(steps), max(steps)),
                stats.iqm(finals[:, None]),
                low,
                high,
                float(finals.mean()),
                float(finals.std()),
                float(np.mean([record.wall_seconds[-1] for record in group])),
                1000.0 * float(np.mean([r.wall_seconds[-1] / r.env_step[-1] for r in group])),
                _goals_of(group),
            )
        )
    return table


def _goals_of(group: Sequence[RunRecord]) -> tuple[int, ...] | None:
    goals = [record.goals_reached for record in sorted(group, key=lambda r: r.seed)]
    return None if None in goals else tuple(goals)


COLUMNS = ["env", "algo", "seeds", "env_steps", "iqm", "iqm_ci_low", "iqm_ci_high", "mean", "std",
           "wall_seconds", "ms_per_env_step", "goals_reached"]  # fmt: skip


def format_comparison(table: Sequence[Comparison], fmt: str) -> str:
    """``markdown`` (one table per env) or ``csv`` (one table, an ``env`` column)."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in table:
            steps = format_steps(row.env_steps)
            goals = "" if row.goals_reached is None else ";".join(map(str, row.goals_reached))
            writer.writerow([row.env, row.algo, row.seeds, steps, *_numbers(row), goals])
        return out.getvalue()
    if fmt != "markdown":
        raise UsageError(f"unknown format {fmt!r}; accepted: markdown, csv")
    blocks = []
    for env in sorted({row.env for row in table}):
        rows = [row for row in table if row.env == env]
        with_goals = any(row.goals_reached is not None for row in rows)
        goal_header = f" goals reached (>= {GOAL_SHARE:.0%} of episodes), per seed |"
        lines = [
            f"### {env}",
            "",
            "| algo | seeds | env steps | final return IQM [95% CI] | mean ± std | wall time | "
            "ms per env step |" + (goal_header if with_goals else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if with_goals else ""),
        ]
        for row in rows:
            goals = "-" if row.goals_reached is None else ", ".join(map(str, row.goals_reached))
            lines.append(
                f"| {row.algo} | {row.seeds} | {format_steps(row.env_steps)} | "
                f"{row.iqm:.1f} [{row.iqm_low:.1f}, {row.iqm_high:.1f}] | "
                f"{row.mean:.1f} ± {row.std:.1f} | {_duration(row.wall_seconds)} | "
                f"{row.ms_per_env_step:.1f} |" + (f" {goals} |" if with_goals else "")
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _numbers(row: Comparison) -> list[str]:
    values = (row.iqm, row.iqm_low, row.iqm_high, row.mean, row.std, row.wall_seconds,
              row.ms_per_env_step)  # fmt: skip
    return [repr(float(v)) for v in values]


def format_steps(steps: tuple[int, int]) -> str:
    return str(steps[0]) if steps[0] == steps[1] else f"{steps[0]}-{steps[1]}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"


# --- plot --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Curve:
    """IQM across an algorithm's runs on one env at each step all of them evaluated."""

    env: str
    algo: str
    seeds: int
    x: np.ndarray  # [points]: env steps, or the runs' mean wall time at those steps
    iqm: np.ndarray  # [points]
    low: np.ndarray  # [points]
    high: np.ndarray  # [points]


def curves(records: Sequence[RunRecord], x: str = "steps", reps: int = 2_000) -> list[Curve]:
    """Learning curves per env and algorithm: the IQM of the runs' evaluation returns and its
    95 % stratified-bootstrap band at every env step one of them evaluated within the span all of
    them cover (a run that did not evaluate at such a step is interpolated linearly between its
    neighbouring evaluations). With ``x="time"`` a point sits at the runs' mean wall time of that
    step."""
    if x not in ("steps", "time"):
        raise UsageError(f"unknown x axis {x!r}; accepted: steps, time")
    by_key: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        by_key.setdefault((record.env, record.algo), []).append(record)
    result = []
    for (env, algo), group in sorted(by_key.items()):
        first = max(record.env_step[0] for record in group)
        last = min(record.env_step[-1] for record in group)
        grid = np.unique(np.concatenate([record.env_step for record in group]))
        grid = grid[(grid >= first) & (grid <= last)]
        if grid.size == 0:
            raise UsageError(f"the {algo} runs on {env} share no span of evaluated env steps")
        returns = np.array([np.interp(grid, r.env_step, r.eval_return) for r in group])
        walls = np.array([np.interp(grid, r.env_step, r.wall_seconds) for r in group])
        bands = [
            stats.stratified_bootstrap_ci(returns[:, [i]], reps=reps) for i in range(grid.size)
        ]
        result.append(
            Curve(
                env,
                algo,
                len(group),
                grid.astype(np.float64) if x == "steps" else walls.mean(axis=0),
                np.array([stats.iqm(returns[:, [i]]) for i in range(grid.size)]),
                np.array([band[0] for band in bands]),
                np.array([band[1] for band in bands]),
            )
        )
    return result


# A published result to draw beside a curve: (env step, mean, std) of (algo, env), or None.
Reference = Callable[[str, str], tuple[float, float, float] | None]


def plot_curves(
    table: Sequence[Curve],
    out: Path,
    x: str = "steps",
    reference: Reference | None = None,
    title: str | None = None,
) -> None:
    """One panel per env, one line per algorithm with its band; written atomically to ``out``.
    ``reference(algo, env)`` adds a published mean ± std as a starred point at its step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({curve.env for curve in table})
    figure, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for axis, env in zip(axes[0], envs, strict=True):
        for curve in (curve for curve in table if curve.env == env):
            (line,) = axis.plot(
                curve.x, curve.iqm, marker=".", label=f"{curve.algo} ({curve.seeds} seeds)"
            )
            axis.fill_between(curve.x, curve.low, curve.high, alpha=0.25, color=line.get_color())
            published = reference(curve.algo, env) if reference is not None else None
            if published is not None:
                step, mean, std = published
                axis.errorbar(
                    [step], [mean], yerr=[std], color=line.get_color(), marker="*",
                    markersize=10, capsize=4, label=f"{curve.algo}, published (mean ± std)",
                )  # fmt: skip
        axis.set_title(env)
        axis.set_xlabel("env steps" if x == "steps" else "wall time (s)")
        axis.set_ylabel("evaluation return (IQM, 95% CI)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title is not None:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, out)
    plt.close(figure)


def plot_trajectories(records: Sequence[RunRecord], out: Path) -> None:
    """The MultiGoal runs' sampled trajectories side by side, like the MaxEntDP paper's Fig. 1;
    written atomically to ``out`` (see :func:`trajectory_figure`)."""
    import matplotlib.pyplot as plt

    figure = trajectory_figure(records)
    save_figure(figure, out)
    plt.close(figure)


def trajectory_figure(records: Sequence[RunRecord]) -> Any:
    """One panel per run that holds ``trajectories.png`` (its sampled paths over the env's cost
    contours, with axis labels): a column per algorithm, in the order the runs come, and a row
    per seed. Each panel is titled with the algorithm, the seed and the episodes that ended at
    each goal (``summary.json``'s ``stochastic_episodes``, the same episodes the image draws).

    Raises:
        UsageError: no run holds ``trajectories.png``; a run's image or goal counts are damaged
            or missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    panels = [r for r in records if (r.run_dir / TRAJECTORIES_FILE).is_file()]
    if not panels:
        raise UsageError("--trajectories: no run holds trajectories.png (MultiGoal-v0 runs do)")
    columns: dict[str, list[RunRecord]] = {}
    for record in panels:
        columns.setdefault(record.algo, []).append(record)
    rows = max(len(column) for column in columns.values())
    figure, axes = plt.subplots(
        rows,
        len(columns),
        figsize=(4.2 * len(columns), 5.3 * rows),
        squeeze=False,
        layout="constrained",
    )
    for column_index, column in enumerate(columns.values()):
        column.sort(key=lambda record: record.seed)
        for row_index in range(rows):
            axis = axes[row_index, column_index]
            axis.axis("off")
            if row_index >= len(column):
                continue
            record = column[row_index]
            try:
                image = matplotlib.image.imread(record.run_dir / TRAJECTORIES_FILE)
            except (OSError, ValueError, SyntaxError) as error:
                raise runs.DamagedFileError(
                    f"{record.run_dir / TRAJECTORIES_FILE} is damaged ({runs.error_reason(error)})"
                ) from None
            axis.imshow(image)
            axis.set_title(
                f"{record.algo}, seed {record.seed}\n{_goal_counts_line(record.run_dir)}",
                fontsize=10,
            )
    return figure


def sampled_goal_counts(run_dir: Path) -> tuple[list[int], int]:
    """The sampled episodes at the end of a MultiGoal run that ended at each goal, and how many
    episodes were sampled (``summary.json``'s ``stochastic_episodes``).

    Raises:
        DamagedFileError: the summary is unreadable or holds no such counts.
    """
    summary = runs.read_json(run_dir / runs.SUMMARY_FILE)
    episodes = summary.get("stochastic_episodes")
    try:
        counts = [int(episodes[f"goal_{index}"]) for index in range(len(GOAL_POSITIONS))]
        return counts, int(episodes["episodes"])
    except (KeyError, TypeError, ValueError):
        raise runs.DamagedFileError(
            f"{run_dir / runs.SUMMARY_FILE} holds no goal counts: no sampled episodes with "
            "per-goal counts"
        ) from None


def goals_reached(run_dir: Path, min_share: float) -> int:
    """Goals reached by at least ``min_share`` of a MultiGoal run's sampled episodes at the end
    (its ``summary.json``).

    Raises:
        DamagedFileError: the summary is unreadable or holds no goal counts.
    """
    counts, episodes = sampled_goal_counts(run_dir)
    return sum(count >= min_share * episodes for count in counts)


def _goal_counts_line(run_dir: Path) -> str:
    """The sampled episodes that ended at each goal, e.g. ``episodes at +x: 16, -x: 1, +y: 16,
    -y: 16 (of 50)``."""
    counts, total = sampled_goal_counts(run_dir)
    names = [_goal_direction(position) for position in GOAL_POSITIONS]
    shares = ", ".join(f"{name}: {count}" for name, count in zip(names, counts, strict=True))
    return f"episodes at {shares} (of {total})"


def _goal_direction(position: np.ndarray) -> str:
    """A goal on an axis by its direction from the start: (5, 0) -> ``+x``, (0, -5) -> ``-y``."""
    axis = int(np.argmax(np.abs(position)))
    return f"{'+' if position[axis] > 0 else '-'}{'xy'[axis]}"


def save_figure(figure: Any, out: Path) -> None:
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out {str(out)!r}: name a .png, .pdf or .svg file")
    with runs.atomic_path(out) as temporary:
        figure.savefig(temporary, dpi=120, format=out.suffix[1:].lower())

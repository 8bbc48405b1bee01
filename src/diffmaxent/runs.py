"""The run directory: resolved config, per-evaluation metrics, checkpoints and figures."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffmaxent.errors import UsageError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
CURVE_FILE = "curve.png"
# Everything a run writes; --force removes exactly these and leaves other files alone.
SUMMARY_FILE = "summary.json"
RUN_ARTIFACTS = (
    CONFIG_FILE,
    METRICS_FILE,
    CHECKPOINT_DIR,
    CURVE_FILE,
    SUMMARY_FILE,
    "trajectories.png",
)


def holds_run(directory: Path) -> bool:
    return any((Path(directory) / name).exists() for name in RUN_ARTIFACTS)


def check_output_directory(directory: Path, force: bool) -> None:
    """Refuse a path that is a file, or a directory holding a run unless ``force``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"output path {str(directory)!r} exists and is not a directory")
    if holds_run(directory) and not force:
        raise UsageError(
            f"output directory {str(directory)!r} already holds a run; "
            "choose another --out or pass --force to replace it"
        )


def prepare_output_directory(directory: Path, force: bool) -> None:
    """Create the run directory; with ``force``, first remove a previous run's artifacts."""
    directory = Path(directory)
    check_output_directory(directory, force)
    for name in RUN_ARTIFACTS:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
    return json.loads(path.read_text())


class MetricsLog:
    """Appends one row per evaluation to ``metrics.csv`` with a fixed set of columns."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = []
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerow(self.columns)

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"metrics not declared as columns: {sorted(unknown)}")
        self.rows.append(dict(row))
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_format(row.get(c)) for c in self.columns])


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as floats (missing values become NaN)."""
    with (Path(run_dir) / METRICS_FILE).open() as f:
        return [
            {k: float(v) if v != "" else math.nan for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def plot_curve(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Evaluation return (mean ± std over episodes) against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["env_step"] for r in rows], dtype=float)
    mean = np.array([r["eval_return_mean"] for r in rows], dtype=float)
    std = np.array([r["eval_return_std"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, mean, marker="o", color="C0", label="evaluation return")
    ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.2, label="± std")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

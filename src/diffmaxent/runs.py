"""The run directory: resolved config, status, metrics, checkpoints, replay rows and figures.

Every file is written by write-then-rename (a temporary sibling, flushed and fsynced, then
renamed over the old one), so a crash at any moment leaves either the previous or the new version
of each file, never a mix. A run directory is locked (``.lock``, an ``flock`` the kernel drops
when the process dies) while a process trains in it, and ``status.json`` records what happened to
it: ``running``, ``complete``, ``interrupted`` (with the step), ``diverged`` or ``failed``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import io
import json
import math
import os
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffmaxent.errors import UsageError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
REPLAY_DIR = "replay"
CURVE_FILE = "curve.png"
SUMMARY_FILE = "summary.json"
STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
GROUP_FILE = "group.json"  # in a directory of several seeds trained together
EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard event files (one per training process)
WANDB_DIR = "wandb"
WANDB_ID_FILE = "wandb-id.txt"
# Everything a run writes; --force removes exactly these and leaves other files alone.
RUN_ARTIFACTS = (
    CONFIG_FILE,
    METRICS_FILE,
    CHECKPOINT_DIR,
    REPLAY_DIR,
    CURVE_FILE,
    SUMMARY_FILE,
    STATUS_FILE,
    "trajectories.png",
    GROUP_FILE,
    WANDB_DIR,
    WANDB_ID_FILE,
)
STATUSES = ("running", "complete", "interrupted", "diverged", "failed")


class DamagedFileError(UsageError):
    """A run file that is truncated, empty, not what its name says, or from something else."""


def fsync_directory(directory: Path) -> None:
    """Make a rename or creation in ``directory`` survive a power loss, not just a crash."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that infer a format from it
    work) to write to; on success it is fsynced and renamed over ``path``, on failure removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as strict JSON (non-finite floats become null), atomically."""
    write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        DamagedFileError: missing, unreadable, not JSON, or not an object.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedFileError(f"{path} is damaged ({error_reason(error)})") from None
    if not isinstance(data, dict):
        raise DamagedFileError(f"{path} is damaged (not a JSON object)")
    return data


def error_reason(error: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _artifacts(directory: Path) -> list[Path]:
    """The run's own files that exist in ``directory``."""
    directory = Path(directory)
    found = [directory / name for name in RUN_ARTIFACTS if (directory / name).exists()]
    if directory.is_dir():
        found += sorted(directory.glob(EVENTS_PREFIX + "*"))
    return found


def holds_run(directory: Path) -> bool:
    return bool(_artifacts(directory))


def seed_run_name(seed: int) -> str:
    """The name of a seed's run directory inside a group directory."""
    return f"seed{seed}"


def write_group(group_dir: Path, data: dict[str, Any]) -> None:
    """``group.json`` of a group directory: its algo, env, preset and ``seeds``."""
    write_json(Path(group_dir) / GROUP_FILE, data)


def group_runs(group_dir: Path) -> list[Path]:
    """The seeds' run directories of a group directory, in the order of its ``seeds``.

    Raises:
        DamagedFileError: ``group.json`` is unreadable or does not list seeds.
    """
    path = Path(group_dir) / GROUP_FILE
    data = read_json(path)
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)
        or min(seeds) < 0
        or len(set(seeds)) != len(seeds)
    ):
        raise DamagedFileError(f"{path} does not list the group's seeds")
    return [Path(group_dir) / seed_run_name(seed) for seed in seeds]


def is_complete(run_dir: Path) -> bool:
    """Whether the run's ``status.json`` says ``complete`` (a damaged one does not)."""
    try:
        return read_json(Path(run_dir) / STATUS_FILE).get("status") == "complete"
    except DamagedFileError:
        return False


def holds_group(directory: Path) -> bool:
    return (Path(directory) / GROUP_FILE).exists()


def check_output_directory(directory: Path, force: bool) -> None:
    """Refuse a path that is a file, or a directory holding a run unless ``force``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"output path {str(directory)!r} exists and is not a directory")
    if holds_run(directory) and not force:
        raise UsageError(
            f"output directory {str(directory)!r} already holds a run; "
            "choose another --out, pass --force to replace it or --resume to continue it"
        )


def remove_run(directory: Path) -> None:
    """Remove a previous run's own files (call only while holding the directory's lock)."""
    for path in _artifacts(directory):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


class RunLock:
    """An exclusive lock on a run directory, held while a process trains in it.

    It is an ``flock`` on ``RUN_DIR/.lock``: the kernel releases it when the process ends, however
    it ends (SIGKILL included), so a lock is never left stale. The file holds the holder's pid and
    host for the message another process prints.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._file: io.TextIOWrapper | None = None

    def acquire(self) -> RunLock:
        """Take the lock.

        Raises:
            UsageError: another process holds it.
        """
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(
                f"run directory {str(self.path.parent)!r} is in use by {holder}; "
                "wait for it to finish or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def write_status(directory: Path, status: str, env_step: int, **details: Any) -> None:
    """Record what the run in ``directory`` is doing or how it ended (``status.json``)."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    write_json(
        Path(directory) / STATUS_FILE,
        {
            "status": status,
            "env_step": env_step,
            "updated": datetime.datetime.now().isoformat(timespec="seconds"),
            "pid": os.getpid(),
            **details,
        },
    )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """``config.json`` of a run.

    Raises:
        UsageError: ``run_dir`` is not a run directory.
        DamagedFileError: ``config.json`` is damaged.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir() or not (path.exists() or holds_run(run_dir)):
        raise UsageError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
    return read_json(path)


def format_value(value: Any) -> str:
    """A metrics cell: blank for "not measured" (None), ``nan`` / ``inf`` written out."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"  # nan, inf and -inf come out as such
    return str(value)


class MetricsLog:
    """``metrics.csv``: one row per evaluation with a fixed set of columns, the whole file
    rewritten (atomically) at every row.

    A blank cell means "not measured" (a training metric before the first update, a training
    return before the first finished episode); a measured NaN is written ``nan``.
    """

    def __init__(
        self, path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]
        self._write()

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"metrics not declared as columns: {sorted(unknown)}")
        self.rows.append(dict(row))
        self._write()

    def _write(self) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([format_value(row.get(c)) for c in self.columns])
        write_text(self.path, text.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as floats (blank "not measured" cells become NaN too)."""
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
    mean = np.array([_number(r.get("eval_return_mean")) for r in rows], dtype=float)
    std = np.array([_number(r.get("eval_return_std")) for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, mean, marker="o", color="C0", label="evaluation return")
    ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.2, label="± std")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(Path(path)) as temporary:
        fig.savefig(temporary)
    plt.close(fig)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)

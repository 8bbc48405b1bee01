"""Where a run's evaluation rows go besides ``metrics.csv``: TensorBoard event files in the run
directory (always; written with tensorboardX, no TensorFlow), and Weights & Biases when asked for
(``--wandb``, the ``[wandb]`` extra; ``WANDB_MODE=offline`` works without a network).

Each row becomes scalars at its ``env_step``: ``eval/return_mean``, ``eval/return_std``, the env's
own evaluation columns (``eval/goals_reached``, ...), ``train/episode_return``, ``train/updates``,
every training metric (``train/critic_loss``, ...) and ``perf/env_steps_per_s``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter

from diffmaxent.errors import UsageError
from diffmaxent.runs import WANDB_ID_FILE, write_text

_EVAL_COLUMNS = {"eval_return_mean": "eval/return_mean", "eval_return_std": "eval/return_std"}
_TRAIN_COLUMNS = {"train_episode_return": "train/episode_return", "updates": "train/updates"}


def scalars(
    row: Mapping[str, Any], report_names: list[str], steps_per_s: float
) -> dict[str, float]:
    """The tagged scalars of one ``metrics.csv`` row (blank cells left out)."""
    tagged: dict[str, float] = {}
    for name, value in row.items():
        if value is None or name in ("env_step", "wall_seconds"):
            continue
        if name in _EVAL_COLUMNS:
            tag = _EVAL_COLUMNS[name]
        elif name in _TRAIN_COLUMNS:
            tag = _TRAIN_COLUMNS[name]
        elif name in report_names:
            tag = f"eval/{name}"
        else:
            tag = f"train/{name}"
        tagged[tag] = float(value)
    tagged["perf/env_steps_per_s"] = float(steps_per_s)
    return tagged


class TensorBoard:
    """Event files in ``run_dir``. A resumed run purges the events after its checkpoint's step,
    which it writes again."""

    def __init__(self, run_dir: Path, resumed_at: int | None) -> None:
        purge_step = resumed_at + 1 if resumed_at is not None else None
        self.writer = SummaryWriter(logdir=str(run_dir), purge_step=purge_step)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value if math.isfinite(value) else float("nan"), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def require_wandb() -> Any:
    """The ``wandb`` module.

    Raises:
        UsageError: it is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise UsageError("--wandb needs wandb: pip install 'diffmaxent[wandb]'") from None
    return wandb


class WandbRun:
    """One W&B run per run directory (W&B keeps its files under ``RUN_DIR/wandb``); a resumed run
    continues the same W&B run (W&B ignores the steps it already has). Seeds trained together share
    the group directory's name as W&B group."""

    def __init__(
        self, run_dir: Path, config: Mapping[str, Any], group: str | None, resumed: bool
    ) -> None:
        wandb = require_wandb()
        id_file = Path(run_dir) / WANDB_ID_FILE
        if resumed and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
            write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project="diffmaxent",
            name=Path(run_dir).name if group is None else f"{group}/{Path(run_dir).name}",
            group=group,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=dict(config),
            reinit="create_new",
        )

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()

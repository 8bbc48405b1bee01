"""Checkpoints as plain arrays plus JSON: no pickled JAX objects.

A checkpoint is a directory ``checkpoints/step_<env_step:09d>`` holding

* ``state.npz``: every array leaf of the agent state, keyed by its pytree path;
* ``loop.npz``: the loop's arrays (RNG keys, the current observations, the envs' physics);
* ``meta.json``: the env step, the run's config, and the loop's JSON state (counters, numpy RNG
  states, the metrics rows so far).

It is written into ``step_<n>.tmp`` and renamed into place, so a directory with a final name is
always complete; ``restore`` fills the leaves of a freshly initialised state of the same
structure, so loading needs the config (to rebuild the networks) and nothing else. Every reader
turns a truncated, empty or foreign file into :class:`DamagedCheckpoint` with a one-line reason,
and :func:`newest_intact` falls back to older checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

from diffmaxent.errors import DamagedFileWarning, UsageError
from diffmaxent.runs import error_reason, fsync_directory

STATE_FILE = "state.npz"
LOOP_FILE = "loop.npz"
META_FILE = "meta.json"
PREFIX = "step_"
FORMAT = 2  # 1: state and meta only (no resume)
_NAME = re.compile(rf"{PREFIX}(\d+)")

T = TypeVar("T")


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be read back as written; the message is one line."""


def _named_leaves(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves], treedef


def non_finite_leaf(tree: Any) -> str | None:
    """The path of the first floating-point leaf of ``tree`` holding a NaN or Inf, else None."""
    named, _ = _named_leaves(tree)
    for name, leaf in named:
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            return name
    return None


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())


def save(
    directory: Path,
    state: Any,
    meta: dict[str, Any],
    loop_arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint into ``directory`` atomically (via ``<directory>.tmp``)."""
    directory = Path(directory)
    temporary = directory.with_name(directory.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    named, _ = _named_leaves(state)
    _write_npz(temporary / STATE_FILE, {name: np.asarray(leaf) for name, leaf in named})
    if loop_arrays is not None:
        _write_npz(temporary / LOOP_FILE, loop_arrays)
    with open(temporary / META_FILE, "w") as file:
        file.write(json.dumps({"format": FORMAT, **meta}, indent=1, allow_nan=False))
        file.flush()
        os.fsync(file.fileno())
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(temporary, directory)
    fsync_directory(directory.parent)
    return directory


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (each read in full, so zip CRCs are checked)."""
    if not path.is_file():
        raise DamagedCheckpoint(f"{path.name} is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise DamagedCheckpoint(f"{path.name} is unreadable ({error_reason(error)})") from None


def restore(directory: Path, template: Any) -> Any:
    """``template`` with every leaf replaced by the saved array of the same path.

    Raises:
        DamagedCheckpoint: ``state.npz`` is unreadable or does not match ``template``.
    """
    named, treedef = _named_leaves(template)
    data = _read_npz(Path(directory) / STATE_FILE)
    leaves = []
    for name, leaf in named:
        if name not in data:
            raise DamagedCheckpoint(f"{STATE_FILE} does not match this agent: no {name}")
        array = data[name]
        shape, dtype = _shape_and_dtype(leaf)
        if array.shape != shape:
            raise DamagedCheckpoint(
                f"{STATE_FILE}: {name} has shape {array.shape}, expected {shape}"
            )
        leaves.append(jax.numpy.asarray(array, dtype=dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _shape_and_dtype(leaf: Any) -> tuple[tuple[int, ...], Any]:
    """Of an array, or of a ``jax.ShapeDtypeStruct`` (a template from ``jax.eval_shape``)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return tuple(leaf.shape), leaf.dtype
    return np.shape(leaf), jax.numpy.asarray(leaf).dtype


def read_loop_arrays(directory: Path) -> dict[str, np.ndarray]:
    """The loop's arrays of a checkpoint (raises :class:`DamagedCheckpoint`)."""
    return _read_npz(Path(directory) / LOOP_FILE)


def read_meta(directory: Path) -> dict[str, Any]:
    """``meta.json``, checked against the directory's name.

    Raises:
        DamagedCheckpoint: missing, not JSON, or not the meta of this step.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{META_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedCheckpoint(f"{META_FILE} is unreadable ({error_reason(error)})") from None
    step = step_of(directory)
    if not isinstance(meta, dict) or meta.get("env_step") != step:
        raise DamagedCheckpoint(f"{META_FILE} is not the meta of step {step}")
    if not isinstance(meta.get("config"), dict):
        raise DamagedCheckpoint(f"{META_FILE} holds no config")
    return meta


def step_directory(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"{PREFIX}{step:09d}"


def step_of(directory: Path) -> int | None:
    match = _NAME.fullmatch(Path(directory).name)
    return int(match[1]) if match else None


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoint directories in ``checkpoints`` by step, oldest first (not yet validated)."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def newest_intact(
    checkpoints: Path,
    read: Callable[[Path], T],
    run_dir: Path | None = None,
    at_most: int | None = None,
) -> tuple[Path, T]:
    """The newest checkpoint (at step ``at_most`` or before, if given) that ``read`` accepts,
    and what it returned.

    ``read(directory)`` raises :class:`DamagedCheckpoint` for a checkpoint it cannot use; each
    one skipped is reported by a one-line :class:`DamagedFileWarning`.

    Raises:
        UsageError: no checkpoint, or none intact.
    """
    where = str(run_dir if run_dir is not None else checkpoints)
    found = list_checkpoints(checkpoints)
    if at_most is not None:
        found = [directory for directory in found if step_of(directory) <= at_most]
        if not found:
            raise UsageError(
                f"run directory {where!r} holds no checkpoint at step {at_most} or before"
            )
    if not found:
        raise UsageError(f"run directory {where!r} holds no checkpoint")
    damaged: list[str] = []
    for directory in reversed(found):
        try:
            result = read(directory)
        except DamagedCheckpoint as error:
            damaged.append(f"{directory.name}: {error}")
            warnings.warn(
                f"checkpoint {directory} is damaged ({error}); trying an older one",
                DamagedFileWarning,
                stacklevel=2,
            )
            continue
        return directory, result
    raise UsageError(f"run directory {where!r} holds no intact checkpoint ({damaged[0]})")


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(checkpoints)[:-keep]:
        remove(old)


def remove(directory: Path) -> None:
    shutil.rmtree(directory)


def remove_temporaries(checkpoints: Path) -> None:
    """Delete half-written ``step_<n>.tmp`` directories (a crash during a save leaves one)."""
    checkpoints = Path(checkpoints)
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            if path.is_dir() and path.name.endswith(".tmp"):
                shutil.rmtree(path)

"""Checkpoints as plain arrays plus JSON: no pickled JAX objects.

``save`` writes ``state.npz`` (every array leaf of the agent state, keyed by its pytree path) and
``meta.json``; ``restore`` fills the leaves of a freshly initialised state of the same structure,
so loading needs the config (to rebuild the networks) and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

STATE_FILE = "state.npz"
META_FILE = "meta.json"
PREFIX = "step_"


def _named_leaves(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves], treedef


def save(directory: Path, state: Any, meta: dict[str, Any]) -> Path:
    """Write ``state`` and ``meta`` into ``directory`` atomically (via a temporary sibling)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    named, _ = _named_leaves(state)
    np.savez(tmp / STATE_FILE, **{name: np.asarray(leaf) for name, leaf in named})
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def restore(directory: Path, template: Any) -> Any:
    """Return ``template`` with every leaf replaced by the saved array of the same path."""
    named, treedef = _named_leaves(template)
    with np.load(Path(directory) / STATE_FILE) as data:
        missing = [name for name, _ in named if name not in data.files]
        if missing:
            raise ValueError(
                f"checkpoint {directory} does not match this agent: missing {missing[0]}"
            )
        leaves = []
        for name, leaf in named:
            array = data[name]
            if array.shape != np.shape(leaf):
                raise ValueError(
                    f"checkpoint {directory}: {name} has shape {array.shape}, expected "
                    f"{np.shape(leaf)}"
                )
            leaves.append(jax.numpy.asarray(array, dtype=jax.numpy.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / META_FILE).read_text())


def step_directory(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"{PREFIX}{step:09d}"


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints in ``checkpoints``, oldest first."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    found = [
        p
        for p in checkpoints.iterdir()
        if p.is_dir()
        and p.name.startswith(PREFIX)
        and p.name[len(PREFIX) :].isdigit()
        and (p / STATE_FILE).exists()
        and (p / META_FILE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(checkpoints)[:-keep]:
        shutil.rmtree(old)

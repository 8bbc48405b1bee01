"""Replay buffer: preallocated host arrays with ring overwrite, persisted as incremental chunks.

A checkpoint of a 1M-transition buffer cannot afford to rewrite every row, so the buffer is saved
as append-only chunk files ``rows_<start>_<end>.npz``, each holding the transitions with insert
indices ``[start, end)`` (insert index ``i`` lives at ring position ``i % capacity``). A checkpoint
taken after ``inserted`` transitions writes only the rows added since the previous one; restoring
it reads the chunks that cover the last ``capacity`` insert indices before ``inserted``.

Agents that improve the actions of replayed transitions (DIPO) keep them in a second action array,
``improved_action``, which starts as the taken action and is rewritten at rows the agent sampled.
Old rows change, so chunks cannot hold it: each checkpoint also writes the whole array, in ring
order, as ``improved_<inserted>.npy`` (``capacity * action_dim`` floats per checkpoint), and a
restore reads the one of the checkpoint it restores.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from diffmaxent.runs import fsync_directory
from diffmaxent.types import Batch

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
_CHUNK_NAME = re.compile(r"rows_(\d{12})_(\d{12})\.npz")
_IMPROVED_NAME = re.compile(r"improved_(\d{12})\.npy")
# Temporary files start with a dot so that a listing of chunks or snapshots never mistakes one for
# data.
_TEMP_PREFIX = ".rows_"
_IMPROVED_TEMP_PREFIX = ".improved_"
_TEMP_SUFFIX = ".tmp"
# Rows are copied from a chunk into the ring in pieces of this size, bounding the memory a restore
# needs beyond the buffer itself.
_READ_PIECE_BYTES = 8 << 20
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class ReplayDataError(ValueError):
    """A replay chunk needed for a restore is missing, truncated, unreadable or malformed.

    The message is one line naming the file (or the directory and the missing insert range) and
    the problem.
    """


class Chunk(NamedTuple):
    """A chunk file on disk holding the transitions with insert indices ``[start, end)``."""

    start: int
    end: int
    path: Path


class ReplayBuffer:
    """A fixed-capacity FIFO of transitions kept in numpy arrays on the host.

    Once full, each new transition overwrites the oldest. :meth:`sample` draws many batches at once
    (shape ``[num_batches, batch_size, ...]``) so that one device transfer feeds several gradient
    steps. ``inserted`` counts every transition ever added; the next one goes to ring position
    ``inserted % capacity``.

    With ``improved_actions=True`` the buffer also holds ``improved_action`` ``[capacity,
    action_dim]``: each row starts as the action taken and is replaced by
    :meth:`write_improved_actions`; ``action`` itself always stays the action taken.
    """

    def __init__(
        self, capacity: int, obs_dim: int, action_dim: int, improved_actions: bool = False
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros((capacity,), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.terminated = np.zeros((capacity,), dtype=np.float32)
        self.truncated = np.zeros((capacity,), dtype=np.float32)
        self.improved_action = (
            np.zeros((capacity, action_dim), dtype=np.float32) if improved_actions else None
        )
        self.inserted = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
    ) -> None:
        i = self.inserted % self.capacity
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.terminated[i] = float(terminated)
        self.truncated[i] = float(truncated)
        if self.improved_action is not None:
            self.improved_action[i] = action
        self.inserted += 1
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int, num_batches: int = 1) -> Batch:
        """Uniformly sample ``num_batches`` batches (with replacement across the buffer).

        Returns:
            A :class:`Batch` of numpy arrays with leading shape ``[num_batches, batch_size]``.
        """
        return self.gather(self.sample_index(rng, batch_size, num_batches))

    def sample_index(
        self, rng: np.random.Generator, batch_size: int, num_batches: int = 1
    ) -> np.ndarray:
        """Ring positions ``[num_batches, batch_size]`` drawn uniformly from the filled rows (the
        draws :meth:`sample` makes)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        return rng.integers(0, self.size, size=(num_batches, batch_size))

    def gather(self, index: np.ndarray) -> Batch:
        """The transitions at ring positions ``index`` (any shape), as a :class:`Batch` of numpy
        arrays with that leading shape."""
        return Batch(
            obs=self.obs[index],
            action=self.action[index],
            reward=self.reward[index],
            next_obs=self.next_obs[index],
            terminated=self.terminated[index],
            truncated=self.truncated[index],
        )

    def write_improved_actions(self, index: np.ndarray, actions: np.ndarray) -> None:
        """Store ``actions`` ``[*index.shape, action_dim]`` as the improved actions of the rows at
        ring positions ``index``. A row that occurs more than once in ``index`` keeps the action
        of its last occurrence in row-major order (the last gradient step that sampled it)."""
        if self.improved_action is None:
            raise ValueError("this buffer keeps no improved actions (improved_actions=False)")
        flat_index = np.asarray(index).reshape(-1)
        flat_actions = np.asarray(actions, dtype=np.float32).reshape(len(flat_index), -1)
        # np.unique on the reversed order finds each row's last occurrence; fancy assignment
        # itself does not promise which duplicate wins.
        rows, first_in_reversed = np.unique(flat_index[::-1], return_index=True)
        self.improved_action[rows] = flat_actions[len(flat_index) - 1 - first_in_reversed]

    def save_rows(self, directory: str | os.PathLike, start: int) -> Path:
        """Write the transitions with insert indices ``[start, inserted)`` as one chunk file.

        Only the last ``capacity`` transitions are still held, so the chunk starts at
        ``max(start, inserted - capacity)``; its name states the range it holds:
        ``directory/rows_<start:012d>_<end:012d>.npz`` with ``end = inserted``. Each field is an
        array in insert order: ``obs``/``next_obs`` ``[rows, obs_dim]``, ``action``
        ``[rows, action_dim]``, ``reward``/``terminated``/``truncated`` ``[rows]`` (float32).

        The file is written under a temporary name in ``directory``, fsynced, then renamed, so a
        file with the final name is always complete.

        Returns:
            The path of the chunk file.
        """
        if not 0 <= start <= self.inserted:
            raise ValueError(f"start must be in [0, {self.inserted}], got {start}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        first = max(start, self.inserted - self.capacity)
        path = directory / f"rows_{first:012d}_{self.inserted:012d}.npz"
        descriptor, temp_name = tempfile.mkstemp(
            prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=directory
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                # Stored, not deflated: float rows compress poorly and deflate is slower than disk.
                with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                    for field in FIELDS:
                        _write_member(archive, field, getattr(self, field), first, self.inserted)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        fsync_directory(directory)
        return path

    def save_improved_actions(self, directory: str | os.PathLike) -> Path:
        """Write ``improved_action`` (all ``capacity`` rows, in ring order) as
        ``directory/improved_<inserted:012d>.npy``, under a temporary name first, fsynced, then
        renamed, so a file with the final name is always complete.

        Returns:
            The path of the file.
        """
        if self.improved_action is None:
            raise ValueError("this buffer keeps no improved actions (improved_actions=False)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"improved_{self.inserted:012d}.npy"
        descriptor, temp_name = tempfile.mkstemp(
            prefix=_IMPROVED_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=directory
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                np.lib.format.write_array(file, self.improved_action, allow_pickle=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        fsync_directory(directory)
        return path

    @classmethod
    def restore(
        cls,
        directory: str | os.PathLike,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        inserted: int,
        improved_actions: bool = False,
    ) -> ReplayBuffer:
        """Rebuild the buffer as it was after ``inserted`` transitions had been added.

        Reads the chunks covering insert indices ``[max(0, inserted - capacity), inserted)`` in
        ``directory`` straight into the ring; chunks starting at or after ``inserted`` (written by
        a run after the checkpoint being restored) are ignored. With ``improved_actions=True`` the
        improved actions are read from ``improved_<inserted>.npy``.

        Raises:
            ReplayDataError: a needed chunk is missing, overlaps another, or cannot be read as the
                rows its name promises; or the improved actions are missing or malformed.
        """
        if inserted < 0:
            raise ValueError(f"inserted must be non-negative, got {inserted}")
        buffer = cls(capacity, obs_dim, action_dim, improved_actions)
        first = max(0, inserted - capacity)
        covered = first
        for chunk in _chunks(Path(directory)):
            if chunk.end <= first or chunk.start >= inserted or chunk.start == chunk.end:
                continue
            if chunk.start > covered:
                raise ReplayDataError(
                    f"{directory}: no chunk holds rows [{covered}, {chunk.start}) (next is "
                    f"{chunk.path.name})"
                )
            if chunk.start < covered and covered > first:
                raise ReplayDataError(
                    f"{chunk.path}: overlaps rows up to {covered} already read from another chunk"
                )
            buffer._read_chunk(chunk, first=covered, stop=min(chunk.end, inserted))
            covered = min(chunk.end, inserted)
        if covered < inserted:
            raise ReplayDataError(f"{directory}: no chunk holds rows [{covered}, {inserted})")
        buffer.inserted = inserted
        buffer.size = min(inserted, capacity)
        if improved_actions:
            buffer._read_improved_actions(Path(directory) / f"improved_{inserted:012d}.npy")
        return buffer

    def _read_improved_actions(self, path: Path) -> None:
        """Replace ``improved_action`` with the array in ``path``, after checking it is one."""
        if not path.is_file():
            raise ReplayDataError(f"{path}: missing (the improved actions of this checkpoint)")
        try:
            with path.open("rb") as file:
                array = np.lib.format.read_array(file, allow_pickle=False)
        except (OSError, EOFError, ValueError) as error:
            problem = " ".join(str(error).split())
            raise ReplayDataError(f"{path}: unreadable ({problem})") from error
        expected = self.improved_action
        if array.shape != expected.shape or array.dtype != expected.dtype:
            raise ReplayDataError(
                f"{path}: is {array.dtype}{list(array.shape)}, expected "
                f"{expected.dtype}{list(expected.shape)}"
            )
        self.improved_action = array

    def _read_chunk(self, chunk: Chunk, first: int, stop: int) -> None:
        """Copy insert indices ``[first, stop)`` (within the chunk's range) from the chunk file into
        the ring positions they occupy."""
        try:
            with zipfile.ZipFile(chunk.path) as archive:
                members = sorted(archive.namelist())
                expected = sorted(f"{field}.npy" for field in FIELDS)
                if members != expected:
                    raise ReplayDataError(
                        f"{chunk.path}: holds {members}, expected the arrays {expected}"
                    )
                for field in FIELDS:
                    with archive.open(f"{field}.npy") as member:
                        _read_member(chunk, member, field, getattr(self, field), first, stop)
        except ReplayDataError:
            raise
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            problem = " ".join(str(error).split())
            raise ReplayDataError(f"{chunk.path}: unreadable ({problem})") from error


def _ring_segments(array: np.ndarray, first: int, stop: int) -> list[np.ndarray]:
    """Views of ``array`` (a ring ``[capacity, ...]``) at the positions of insert indices
    ``[first, stop)``, in insert order, empty ones left out: two when the range wraps around."""
    capacity = len(array)
    begin = first % capacity
    head = min(stop - first, capacity - begin)
    segments = [array[begin : begin + head], array[: stop - first - head]]
    return [segment for segment in segments if len(segment)]


def _read_member(
    chunk: Chunk, member: IO[bytes], field: str, array: np.ndarray, first: int, stop: int
) -> None:
    """Check that ``member`` is the ``.npy`` of ``field`` for ``chunk`` and copy its rows for insert
    indices ``[first, stop)`` into the ring ``array`` in place."""
    expected_shape = (chunk.end - chunk.start, *array.shape[1:])
    header_reader = _HEADER_READERS.get(np.lib.format.read_magic(member))
    if header_reader is None:
        raise ReplayDataError(f"{chunk.path}: {field} has an unsupported .npy format version")
    shape, fortran_order, dtype = header_reader(member)
    if shape != expected_shape or fortran_order or dtype != array.dtype:
        order = " (Fortran order)" if fortran_order else ""
        raise ReplayDataError(
            f"{chunk.path}: {field} is {dtype}{list(shape)}{order}, expected "
            f"{array.dtype}{list(expected_shape)}"
        )
    member.seek((first - chunk.start) * array[:1].nbytes, os.SEEK_CUR)
    for segment in _ring_segments(array, first, stop):
        target = memoryview(segment).cast("B")
        for offset in range(0, len(target), _READ_PIECE_BYTES):
            wanted = min(_READ_PIECE_BYTES, len(target) - offset)
            piece = member.read(wanted)
            if len(piece) != wanted:
                raise ReplayDataError(f"{chunk.path}: {field} ends early")
            target[offset : offset + wanted] = piece


def _write_member(
    archive: zipfile.ZipFile, field: str, array: np.ndarray, first: int, stop: int
) -> None:
    """Write the rows of the ring ``array`` for insert indices ``[first, stop)`` as the ``.npy``
    member ``field.npy`` of shape ``[stop - first, *array.shape[1:]]``, copying no rows."""
    header = {
        "descr": np.lib.format.dtype_to_descr(array.dtype),
        "fortran_order": False,
        "shape": (stop - first, *array.shape[1:]),
    }
    with archive.open(f"{field}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        for segment in _ring_segments(array, first, stop):
            member.write(memoryview(segment).cast("B"))


def _chunks(directory: Path) -> list[Chunk]:
    """Chunk files in ``directory`` by start then end; temporary and other files are skipped."""
    if not directory.is_dir():
        return []
    chunks = []
    for path in directory.iterdir():
        match = _CHUNK_NAME.fullmatch(path.name)
        if match is None:
            continue
        start, end = int(match[1]), int(match[2])
        if end < start:
            raise ReplayDataError(f"{path}: name gives a row range ending before it starts")
        chunks.append(Chunk(start, end, path))
    return sorted(chunks)


def _improved_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """``(inserted, path)`` of the improved-action files in ``directory``."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _IMPROVED_NAME.fullmatch(path.name)
        if match is not None:
            found.append((int(match[1]), path))
    return sorted(found)


def prune_improved_actions(directory: str | os.PathLike, oldest_kept: int) -> list[Path]:
    """Delete the improved-action files of checkpoints older than ``oldest_kept`` (the oldest kept
    checkpoint's ``inserted``).

    Returns:
        The deleted paths.
    """
    removed = [path for at, path in _improved_snapshots(Path(directory)) if at < oldest_kept]
    for path in removed:
        path.unlink()
    return removed


def prune_rows(directory: str | os.PathLike, keep_from: int) -> list[Path]:
    """Delete the chunks no kept checkpoint needs: those whose rows all precede ``keep_from``.

    Pass ``keep_from = oldest kept checkpoint's inserted - capacity``.

    Returns:
        The deleted chunk paths.
    """
    removed = [chunk.path for chunk in _chunks(Path(directory)) if chunk.end <= keep_from]
    for path in removed:
        path.unlink()
    return removed


def discard_rows_after(directory: str | os.PathLike, inserted: int) -> list[Path]:
    """Before resuming from the checkpoint taken at ``inserted``: delete the chunks and
    improved-action files a later (lost) part of the run wrote (chunks starting at or after
    ``inserted``, improved actions of later checkpoints) and any temporary files left by a crash
    mid-write.

    Returns:
        The deleted paths.
    """
    directory = Path(directory)
    removed = [chunk.path for chunk in _chunks(directory) if chunk.start >= inserted]
    removed += [path for at, path in _improved_snapshots(directory) if at > inserted]
    if directory.is_dir():
        removed += [
            path
            for path in directory.iterdir()
            if path.name.startswith((_TEMP_PREFIX, _IMPROVED_TEMP_PREFIX))
            and path.name.endswith(_TEMP_SUFFIX)
        ]
    for path in removed:
        path.unlink()
    return removed


def zeros_batch(obs_dim: int, action_dim: int, batch_size: int, num_batches: int = 1) -> Batch:
    """A batch of zeros with the shapes :meth:`ReplayBuffer.sample` returns (for tracing)."""
    lead = (num_batches, batch_size)
    return Batch(
        obs=np.zeros((*lead, obs_dim), np.float32),
        action=np.zeros((*lead, action_dim), np.float32),
        reward=np.zeros(lead, np.float32),
        next_obs=np.zeros((*lead, obs_dim), np.float32),
        terminated=np.zeros(lead, np.float32),
        truncated=np.zeros(lead, np.float32),
    )

"""Replay-buffer chunks: a checkpoint writes only new rows; a restore rebuilds the exact ring.
Improved actions (agents that rewrite replay actions): written back at the rows sampled, saved whole
per checkpoint, restored exactly, damaged files refused in one line."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from diffmaxent import buffer as buffer_module
from diffmaxent.buffer import (
    FIELDS,
    ReplayBuffer,
    ReplayDataError,
    discard_rows_after,
    prune_improved_actions,
    prune_rows,
)

CAPACITY, OBS_DIM, ACTION_DIM = 23, 3, 2
EVERY = 7  # does not divide CAPACITY, so chunks straddle the end of the ring


def _add_random(buffer: ReplayBuffer, rng: np.random.Generator, count: int) -> None:
    for _ in range(count):
        buffer.add(
            rng.normal(size=OBS_DIM),
            rng.uniform(-1, 1, size=ACTION_DIM),
            float(rng.normal()),
            rng.normal(size=OBS_DIM),
            bool(rng.random() < 0.1),
            bool(rng.random() < 0.1),
        )


def _assert_same_buffer(restored: ReplayBuffer, expected: ReplayBuffer) -> None:
    assert (restored.capacity, restored.inserted, restored.size) == (
        expected.capacity,
        expected.inserted,
        expected.size,
    )
    for field in FIELDS:
        assert np.array_equal(getattr(restored, field), getattr(expected, field)), field
    if expected.size:
        restored_batch = restored.sample(np.random.default_rng(5), batch_size=16, num_batches=3)
        expected_batch = expected.sample(np.random.default_rng(5), batch_size=16, num_batches=3)
        for got, want in zip(restored_batch, expected_batch, strict=True):
            assert np.array_equal(got, want)


def _run_with_checkpoints(directory: Path, checkpoints: int) -> dict[int, ReplayBuffer]:
    """Add EVERY transitions then save the new rows, ``checkpoints`` times; return a deep copy of
    the buffer at each checkpoint, keyed by its ``inserted``."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM)
    snapshots = {}
    for _ in range(checkpoints):
        saved_up_to = buffer.inserted
        _add_random(buffer, rng, EVERY)
        buffer.save_rows(directory, saved_up_to)
        snapshots[buffer.inserted] = copy.deepcopy(buffer)
    return snapshots


def _restore(directory: Path, inserted: int, capacity: int = CAPACITY) -> ReplayBuffer:
    return ReplayBuffer.restore(directory, capacity, OBS_DIM, ACTION_DIM, inserted)


def _names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def test_inserted_counts_every_add_and_the_ring_position_follows_it():
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM)
    _add_random(buffer, np.random.default_rng(1), 2 * CAPACITY + 4)
    assert buffer.inserted == 2 * CAPACITY + 4 and len(buffer) == CAPACITY
    assert buffer.reward[3] != 0 and buffer.reward[4] != 0  # 4 is the oldest row, not a hole


def test_restore_at_every_checkpoint_matches_the_buffer_that_was_never_saved(tmp_path):
    # 15 checkpoints of 7 rows: 105 transitions, four and a half trips round a ring of 23.
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=15)
    # Restoring an early checkpoint must ignore every chunk written after it.
    for inserted, expected in snapshots.items():
        _assert_same_buffer(_restore(tmp_path, inserted), expected)


def test_restore_before_the_buffer_fills_leaves_the_rest_zero(tmp_path):
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=3)
    restored = _restore(tmp_path, 21, capacity=1000)
    assert restored.inserted == restored.size == 21
    assert np.array_equal(restored.obs[:21], snapshots[21].obs[:21])
    assert not restored.obs[21:].any() and not restored.reward[21:].any()


def test_a_chunk_holds_only_the_last_capacity_rows_when_more_were_added(tmp_path):
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM)
    _add_random(buffer, np.random.default_rng(2), 60)
    path = buffer.save_rows(tmp_path, 0)
    assert path.name == f"rows_{60 - CAPACITY:012d}_{60:012d}.npz"
    with np.load(path) as chunk:
        assert sorted(chunk.files) == sorted(FIELDS)
        # Insert order: the oldest surviving row (ring position 60 % 23 = 14) comes first.
        assert np.array_equal(chunk["reward"], np.roll(buffer.reward, -(60 % CAPACITY)))
    _assert_same_buffer(_restore(tmp_path, 60), buffer)


def _delete_second_chunk(directory: Path) -> Path:
    path = sorted(directory.glob("rows_*.npz"))[1]
    path.unlink()
    return Path(directory)


def _cut_second_chunk_in_half(directory: Path) -> Path:
    path = sorted(directory.glob("rows_*.npz"))[1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty_second_chunk(directory: Path) -> Path:
    path = sorted(directory.glob("rows_*.npz"))[1]
    path.write_bytes(b"")
    return path


def _foreign_second_chunk(directory: Path) -> Path:
    path = sorted(directory.glob("rows_*.npz"))[1]
    with path.open("wb") as file:
        np.savez(file, observations=np.zeros((EVERY, OBS_DIM)), rewards=np.zeros(EVERY))
    return path


def _float64_second_chunk(directory: Path) -> Path:
    path = sorted(directory.glob("rows_*.npz"))[1]
    with np.load(path) as chunk:
        arrays = {field: chunk[field].astype(np.float64) for field in FIELDS}
    with path.open("wb") as file:
        np.savez(file, **arrays)
    return path


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_delete_second_chunk, "no chunk holds rows [7, 14)"),
        (_cut_second_chunk_in_half, "unreadable"),
        (_empty_second_chunk, "unreadable"),
        (_foreign_second_chunk, "expected the arrays"),
        (_float64_second_chunk, "obs is float64[7, 3], expected float32[7, 3]"),
    ],
)
def test_a_damaged_needed_chunk_raises_a_one_line_replay_data_error(tmp_path, damage, problem):
    _run_with_checkpoints(tmp_path, checkpoints=3)
    named = damage(tmp_path)
    with pytest.raises(ReplayDataError) as caught:
        _restore(tmp_path, 21)
    message = str(caught.value)
    assert str(named) in message and problem in message and "\n" not in message


def test_a_wrongly_shaped_chunk_raises_a_replay_data_error(tmp_path):
    _run_with_checkpoints(tmp_path, checkpoints=2)
    with pytest.raises(ReplayDataError, match=r"obs is float32\[7, 3\], expected float32\[7, 4\]"):
        ReplayBuffer.restore(tmp_path, CAPACITY, OBS_DIM + 1, ACTION_DIM, 14)


def test_a_damaged_chunk_that_is_no_longer_needed_is_not_read(tmp_path):
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=6)  # 42 rows; 42 - 23 = 19
    (tmp_path / f"rows_{0:012d}_{7:012d}.npz").write_bytes(b"")
    _assert_same_buffer(_restore(tmp_path, 42), snapshots[42])


def test_overlapping_chunks_raise_rather_than_pick_one(tmp_path):
    # A run resumed at 14 without discard_rows_after, checkpointing at a different interval,
    # writes [14, 17) next to the lost run's [14, 21): the rows for 14..16 are ambiguous.
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=3)
    resumed = copy.deepcopy(snapshots[14])
    _add_random(resumed, np.random.default_rng(4), 3)
    resumed.save_rows(tmp_path, 14)
    with pytest.raises(ReplayDataError, match=r"rows_000000000014_000000000021\.npz: overlaps"):
        _restore(tmp_path, 21)


def test_prune_deletes_exactly_the_chunks_ending_at_or_before_keep_from(tmp_path):
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=8)  # chunks [0, 7) ... [49, 56)
    oldest_kept = 35
    removed = prune_rows(tmp_path, keep_from=oldest_kept - CAPACITY)  # 12: [0, 7) only
    assert [path.name for path in removed] == [f"rows_{0:012d}_{7:012d}.npz"]
    assert len(_names(tmp_path)) == 7
    for inserted in (35, 42, 49, 56):
        _assert_same_buffer(_restore(tmp_path, inserted), snapshots[inserted])


def test_discard_deletes_later_chunks_and_leftover_temporary_files(tmp_path):
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=5)  # chunks [0, 7) ... [28, 35)
    leftover = tmp_path / ".rows_killed.tmp"  # what a run killed inside save_rows leaves
    leftover.write_bytes(b"partial")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("not a chunk")
    removed = discard_rows_after(tmp_path, 21)
    assert {path.name for path in removed} == {
        f"rows_{21:012d}_{28:012d}.npz",
        f"rows_{28:012d}_{35:012d}.npz",
        leftover.name,
    }
    assert _names(tmp_path) == {
        f"rows_{0:012d}_{7:012d}.npz",
        f"rows_{7:012d}_{14:012d}.npz",
        f"rows_{14:012d}_{21:012d}.npz",
        unrelated.name,
    }
    _assert_same_buffer(_restore(tmp_path, 21), snapshots[21])


def test_a_crash_while_writing_leaves_no_file_with_a_final_name(tmp_path, monkeypatch):
    snapshots = _run_with_checkpoints(tmp_path, checkpoints=2)
    before = _names(tmp_path)
    buffer = copy.deepcopy(snapshots[14])
    _add_random(buffer, np.random.default_rng(3), EVERY)
    write_member = buffer_module._write_member

    def write_then_fail(archive, field, array, first, stop):
        write_member(archive, field, array, first, stop)
        if field == "next_obs":  # after several arrays are already in the file
            raise OSError("No space left on device")

    monkeypatch.setattr(buffer_module, "_write_member", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        buffer.save_rows(tmp_path, 14)
    assert _names(tmp_path) == before
    _assert_same_buffer(_restore(tmp_path, 14), snapshots[14])


# --- improved actions ----------------------------------------------------------------------------


def _run_with_improvements(directory: Path, checkpoints: int) -> dict[int, ReplayBuffer]:
    """As ``_run_with_checkpoints`` with improved actions: after each batch of adds, rows drawn
    with ``sample_index`` (old ones included) get new improved actions; each checkpoint saves the
    new rows and the improved actions."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM, improved_actions=True)
    snapshots = {}
    for _ in range(checkpoints):
        saved_up_to = buffer.inserted
        _add_random(buffer, rng, EVERY)
        index = buffer.sample_index(rng, batch_size=5, num_batches=2)
        buffer.write_improved_actions(index, rng.uniform(-1, 1, (*index.shape, ACTION_DIM)))
        buffer.save_rows(directory, saved_up_to)
        buffer.save_improved_actions(directory)
        snapshots[buffer.inserted] = copy.deepcopy(buffer)
    return snapshots


def _restore_improved(directory: Path, inserted: int) -> ReplayBuffer:
    return ReplayBuffer.restore(directory, CAPACITY, OBS_DIM, ACTION_DIM, inserted, True)


def test_sample_is_gather_at_sample_index_with_the_same_draws():
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM)
    _add_random(buffer, np.random.default_rng(0), 30)
    index = buffer.sample_index(np.random.default_rng(7), batch_size=4, num_batches=3)
    assert index.shape == (3, 4)
    sampled = buffer.sample(np.random.default_rng(7), batch_size=4, num_batches=3)
    for got, want in zip(sampled, buffer.gather(index), strict=True):
        assert np.array_equal(got, want)
    assert np.array_equal(sampled.action, buffer.action[index])


def test_improved_actions_start_as_the_taken_ones_and_are_written_at_the_rows_given():
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM, improved_actions=True)
    _add_random(buffer, np.random.default_rng(0), 30)  # wraps: rows 0-6 hold inserts 23-29
    taken = buffer.action.copy()
    assert np.array_equal(buffer.improved_action, taken)
    index = np.array([[3, 20], [11, 0]])
    new = np.arange(8, dtype=np.float32).reshape(2, 2, ACTION_DIM)
    buffer.write_improved_actions(index, new)
    assert np.array_equal(buffer.improved_action[index], new)
    others = np.setdiff1d(np.arange(CAPACITY), index)
    assert np.array_equal(buffer.improved_action[others], taken[others])
    assert np.array_equal(buffer.action, taken)  # the critic's taken actions stay


def test_a_row_written_twice_keeps_its_last_action():
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM, improved_actions=True)
    _add_random(buffer, np.random.default_rng(0), 10)
    index = np.array([[4, 2, 4], [2, 4, 9]])
    new = np.arange(12, dtype=np.float32).reshape(2, 3, ACTION_DIM)
    buffer.write_improved_actions(index, new)
    assert np.array_equal(buffer.improved_action[4], new[1, 1])
    assert np.array_equal(buffer.improved_action[2], new[1, 0])
    assert np.array_equal(buffer.improved_action[9], new[1, 2])


def test_a_buffer_without_improved_actions_refuses_to_write_them(tmp_path):
    buffer = ReplayBuffer(CAPACITY, OBS_DIM, ACTION_DIM)
    _add_random(buffer, np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="keeps no improved actions"):
        buffer.write_improved_actions(np.zeros((1, 1), int), np.zeros((1, 1, ACTION_DIM)))
    with pytest.raises(ValueError, match="keeps no improved actions"):
        buffer.save_improved_actions(tmp_path)


def test_restore_at_every_checkpoint_has_the_improved_actions_of_that_checkpoint(tmp_path):
    snapshots = _run_with_improvements(tmp_path, checkpoints=6)  # rows rewritten after chunking
    for inserted, expected in snapshots.items():
        restored = _restore_improved(tmp_path, inserted)
        _assert_same_buffer(restored, expected)
        assert np.array_equal(restored.improved_action, expected.improved_action), inserted
    # The rewrites reach rows whose chunk was written earlier: chunks alone would lose them.
    assert not np.array_equal(snapshots[42].improved_action, snapshots[42].action)


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _float64(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float64))


def _zip_instead(path: Path) -> None:
    with path.open("wb") as file:
        np.savez(file, improved_action=np.zeros((CAPACITY, ACTION_DIM), np.float32))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (Path.unlink, "missing"),
        (_cut_in_half, "unreadable"),
        (lambda path: path.write_bytes(b""), "unreadable"),
        (_zip_instead, "unreadable"),
        (_float64, "is float64[23, 2], expected float32[23, 2]"),
    ],
)
def test_damaged_improved_actions_raise_a_one_line_replay_data_error(tmp_path, damage, problem):
    _run_with_improvements(tmp_path, checkpoints=3)
    path = tmp_path / f"improved_{21:012d}.npy"
    damage(path)
    with pytest.raises(ReplayDataError) as caught:
        _restore_improved(tmp_path, 21)
    message = str(caught.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_prune_and_discard_keep_exactly_the_improved_actions_of_kept_checkpoints(tmp_path):
    snapshots = _run_with_improvements(tmp_path, checkpoints=5)  # improved at 7, 14, ..., 35
    leftover = tmp_path / ".improved_killed.tmp"  # what a run killed inside the save leaves
    leftover.write_bytes(b"partial")
    removed = prune_improved_actions(tmp_path, oldest_kept=14)
    assert [path.name for path in removed] == [f"improved_{7:012d}.npy"]
    removed = discard_rows_after(tmp_path, 21)
    assert {path.name for path in removed} >= {
        f"improved_{28:012d}.npy",
        f"improved_{35:012d}.npy",
        leftover.name,
    }
    assert {name for name in _names(tmp_path) if name.startswith("improved")} == {
        f"improved_{14:012d}.npy",
        f"improved_{21:012d}.npy",
    }
    for inserted in (14, 21):
        restored = _restore_improved(tmp_path, inserted)
        assert np.array_equal(restored.improved_action, snapshots[inserted].improved_action)

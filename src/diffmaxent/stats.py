"""Aggregate scores across runs the way the field reports them (Agarwal et al., 2021, "Deep RL at
the edge of the statistical precipice"): the interquartile mean and a stratified-bootstrap
confidence interval.

These follow the definitions of the ``rliable`` package (1.2.0), written here because rliable
does not import with this project's pinned set (its ``arch`` dependency fails on pandas 3):

* ``iqm``: ``scipy.stats.trim_mean(scores, 0.25, axis=None)``, the mean of the middle 50 % of
  all run x task scores (``int(0.25 n)`` cut from each end);
* ``stratified_bootstrap_ci``: the statistic on ``reps`` resamples, each drawing, for every task
  independently, as many runs as there are with replacement from that task's runs (stratified by
  task); the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of
  those values (arch's ``conf_int(method="percentile")``).

``scores`` is ``[num_runs, num_tasks]`` (one task: ``[num_runs, 1]``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all entries of ``scores [num_runs, num_tasks]``."""
    return float(iqm_of_resamples(np.asarray(scores, np.float64)[None])[0])


def iqm_of_resamples(resamples: np.ndarray) -> np.ndarray:
    """``iqm`` of each ``resamples[r]`` (``[reps, num_runs, num_tasks]``): sort, cut
    ``int(0.25 n)`` scores from each end, average the rest."""
    flat = np.sort(np.asarray(resamples, np.float64).reshape(len(resamples), -1), axis=1)
    cut = int(0.25 * flat.shape[1])
    return flat[:, cut : flat.shape[1] - cut].mean(axis=1)


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] = iqm_of_resamples,
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over stratified bootstrap resamples of ``scores``.

    Args:
        scores: ``[num_runs, num_tasks]``.
        statistic: maps ``[reps, num_runs, num_tasks]`` resamples to ``[reps]`` values.
        reps: bootstrap resamples.
        confidence: the interval's coverage.
        seed: of the resampling generator (the interval is reproducible).

    Returns:
        ``(low, high)``.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [num_runs, num_tasks], got shape {scores.shape}")
    num_runs, num_tasks = scores.shape
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num_runs, size=(reps, num_runs, num_tasks))
    resamples = np.take_along_axis(scores[None], picks, axis=1)
    values = statistic(resamples)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)

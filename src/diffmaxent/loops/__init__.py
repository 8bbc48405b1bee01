"""Training loops: siblings with one signature, ``run(setup, agent) -> TrainResult``, chosen
from :data:`LOOPS` by the algorithm registry.

* ``replay`` (:mod:`~diffmaxent.loops.replay`): off-policy agents learning from a replay buffer;
* ``rollout`` (:mod:`~diffmaxent.loops.rollout`): on-policy agents learning from rollouts of a
  vector of envs;
* ``device-replay`` and ``device-rollout`` (:mod:`~diffmaxent.loops.device`): the same agents on
  ``mjx:`` envs, trained in one compiled program (:data:`DEVICE_LOOPS` stands them in for the
  host loops).

What loops share (resolved config, evaluation, progress, the run directory's recorder, the
result) is :mod:`~diffmaxent.loops.bookkeeping`. A new loop is a new module with a ``run`` and a
settings class (an :class:`~diffmaxent.loops.bookkeeping.EvaluationSchedule` with more fields),
and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from diffmaxent.loops import device, replay, rollout
from diffmaxent.loops.bookkeeping import RunSetup, TrainResult


class Loop(NamedTuple):
    """A training loop: its name, its settings class and its ``run(setup, agent)``."""

    name: str
    config_cls: type
    run: Callable[[RunSetup, Any], TrainResult]


REPLAY = Loop("replay", replay.ReplayLoopConfig, replay.run)
ROLLOUT = Loop("rollout", rollout.RolloutLoopConfig, rollout.run)
DEVICE_REPLAY = Loop("device-replay", device.DeviceReplayLoopConfig, device.run)
DEVICE_ROLLOUT = Loop("device-rollout", device.DeviceRolloutLoopConfig, device.run)
LOOPS: dict[str, Loop] = {
    loop.name: loop for loop in (REPLAY, ROLLOUT, DEVICE_REPLAY, DEVICE_ROLLOUT)
}
DEVICE_LOOPS: dict[str, Loop] = {REPLAY.name: DEVICE_REPLAY, ROLLOUT.name: DEVICE_ROLLOUT}
"""The device loop that trains an agent of a host loop (by its name) on ``mjx:`` envs."""

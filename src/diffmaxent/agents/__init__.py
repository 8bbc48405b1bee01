"""The algorithm registry: ``ALGOS[name]`` is an :class:`AlgoSpec`."""

from __future__ import annotations

from diffmaxent.agents import crossq, diffppo, diffsac, diffwpo, dime, maxentdp, ppo, sac
from diffmaxent.agents.common import Agent, AlgoSpec
from diffmaxent.errors import UsageError

ALGOS: dict[str, AlgoSpec] = {
    spec.name: spec
    for spec in (
        sac.ALGO,
        maxentdp.ALGO,
        dime.ALGO,
        crossq.ALGO,
        ppo.ALGO,
        diffppo.ALGO,
        diffsac.ALGO,
        diffwpo.ALGO,
    )
}


def get_algo(name: str) -> AlgoSpec:
    if name not in ALGOS:
        raise UsageError(f"unknown algo {name!r}; accepted: {', '.join(ALGOS)}")
    return ALGOS[name]


__all__ = ["ALGOS", "Agent", "AlgoSpec", "get_algo"]

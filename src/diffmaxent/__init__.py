"""diffmaxent: diffusion policies for maximum-entropy reinforcement learning.

Public API::

    import diffmaxent
    result = diffmaxent.train("sac", "Pendulum-v1", steps=20_000, out="runs/pendulum")
    agent = diffmaxent.load(result.run_dir)
    action = agent.act(obs, deterministic=False)
"""

from diffmaxent.api import LoadedAgent, load, resolve_config, train
from diffmaxent.envs import make_env
from diffmaxent.errors import UsageError
from diffmaxent.loops.bookkeeping import GroupResult, TrainResult
from diffmaxent.registry import ALGOS

__version__ = "0.1.0"

__all__ = [
    "ALGOS",
    "GroupResult",
    "LoadedAgent",
    "TrainResult",
    "UsageError",
    "load",
    "make_env",
    "resolve_config",
    "train",
]

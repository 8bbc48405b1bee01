"""diffmaxent: diffusion policies for maximum-entropy reinforcement learning.

Public API::

    import diffmaxent
    result = diffmaxent.train("sac", "Pendulum-v1", steps=20_000, out="runs/pendulum")
    agent = diffmaxent.load(result.run_dir)
    action = agent.act(obs, deterministic=False)
"""

from diffmaxent.agents import ALGOS
from diffmaxent.envs import make_env
from diffmaxent.errors import UsageError
from diffmaxent.policy import LoadedAgent, load
from diffmaxent.training import TrainResult, resolve_config, train

__version__ = "0.1.0"

__all__ = [
    "ALGOS",
    "LoadedAgent",
    "TrainResult",
    "UsageError",
    "load",
    "make_env",
    "resolve_config",
    "train",
]

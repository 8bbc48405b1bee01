"""Reloading a trained agent from its run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffmaxent import checkpoint, runs
from diffmaxent.agents import get_algo
from diffmaxent.agents.common import Agent
from diffmaxent.envs.factory import EnvSpec
from diffmaxent.errors import UsageError
from diffmaxent.training import ResolvedConfig, config_from_json


class LoadedAgent:
    """A trained policy: ``act`` takes raw observations and returns actions in the env's bounds.

    Attributes:
        config: the run's resolved configuration.
        env_spec: the env the agent was trained on (its action bounds are used by ``act``).
        state: the agent state from the checkpoint (a pytree of arrays).
        env_step: the env step at which the checkpoint was written.
    """

    def __init__(
        self,
        config: ResolvedConfig,
        env_spec: EnvSpec,
        agent: Agent,
        state: Any,
        env_step: int,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.env_spec = env_spec
        self.agent = agent
        self.state = state
        self.env_step = env_step
        self._key = jax.random.PRNGKey(seed)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) for one observation ``[obs_dim]`` or a batch ``[B, obs_dim]``.

        Returns:
            ``[action_dim]`` or ``[B, action_dim]`` float32, inside the env's action bounds.
        """
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if batch.ndim != 2 or batch.shape[1] != self.env_spec.obs_dim:
            raise ValueError(
                f"expected obs of shape [{self.env_spec.obs_dim}] or [B, {self.env_spec.obs_dim}],"
                f" got {obs.shape}"
            )
        self._key, key = jax.random.split(self._key)
        action = np.asarray(self.agent.act(self.state, batch, key, deterministic))
        env_action = self.env_spec.to_env_action(action)
        return env_action[0] if single else env_action


def load(
    run_dir: str | Path, checkpoint_dir: str | Path | None = None, seed: int = 0
) -> LoadedAgent:
    """Load the latest checkpoint of a run (or the given checkpoint directory).

    Raises:
        UsageError: if ``run_dir`` is not a run directory or holds no checkpoint.
    """
    run_dir = Path(run_dir)
    data = runs.read_run_config(run_dir)
    config = config_from_json(data)
    env_spec = EnvSpec(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data["env_spec"].items()}
    )
    if checkpoint_dir is None:
        found = checkpoint.list_checkpoints(run_dir / runs.CHECKPOINT_DIR)
        if not found:
            raise UsageError(f"run directory {str(run_dir)!r} holds no checkpoint")
        checkpoint_dir = found[-1]
    agent = get_algo(config.algo).make(config.agent, env_spec)
    template = agent.init(jax.random.PRNGKey(0))
    state = checkpoint.restore(Path(checkpoint_dir), template)
    meta = checkpoint.read_meta(Path(checkpoint_dir))
    return LoadedAgent(config, env_spec, agent, state, int(meta["env_step"]), seed=seed)

"""Small on-policy agents with one collected rollout, for the contract tests and test_dmerl."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from diffmaxent.agents.onpolicy import Rollout
from diffmaxent.api import resolve_config
from diffmaxent.envs import make_env
from diffmaxent.loops.rollout import collect_rollout, make_vector_env
from diffmaxent.registry import ALGOS


class RolloutSource:
    """Stands where the contract tests use a replay buffer: ``sample`` returns the same rollout
    whatever is asked (an on-policy update consumes a whole rollout), ``obs`` its observations
    ``[T B, obs_dim]``."""

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self.obs = np.asarray(rollout.obs).reshape(-1, rollout.obs.shape[-1])

    def sample(self, rng: Any, batch_size: int, num_batches: int = 1) -> Rollout:
        del rng, batch_size, num_batches
        return self.rollout


def tiny_on_policy_agent(algo: str, overrides: dict[str, Any], env_id: str = "Pendulum-v1"):
    """``(agent, RolloutSource, resolved_config)``: one rollout collected by the initial policy."""
    config = resolve_config(algo, env_id, overrides=overrides)
    env = make_env(env_id, seed=0)
    agent = ALGOS[algo].make(config.agent, env.env_spec)
    envs = make_vector_env(env_id, config.loop.num_envs, seed=0)
    obs, _ = envs.reset()
    state = agent.init(jax.random.PRNGKey(0))
    rollout, _, _ = collect_rollout(
        agent, state, envs, np.asarray(obs), jax.random.PRNGKey(1), config.loop.rollout_steps
    )
    envs.close()
    return agent, RolloutSource(rollout), config

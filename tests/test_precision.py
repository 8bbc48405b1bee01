"""The float32 matmul precision a run's agent is traced at (``matmul_precision``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from agent_helpers import tiny_agent
from diffmaxent import resolve_config
from diffmaxent.agents.common import with_matmul_precision
from diffmaxent.envs import make_env
from diffmaxent.errors import UsageError
from diffmaxent.registry import ALGOS, make_agent, matmul_precision

TINY_SAC = {"actor_hidden_dims": "16,16", "critic_hidden_dims": "16,16", "batch_size": 8}


def test_auto_is_each_algorithms_choice_and_an_explicit_value_wins():
    assert matmul_precision(resolve_config("maxentdp", "Pendulum-v1")) == "highest"
    for algo in ALGOS:
        if algo != "maxentdp":
            assert matmul_precision(resolve_config(algo, "Pendulum-v1")) == "default", algo
    config = resolve_config("maxentdp", "Pendulum-v1", overrides={"matmul_precision": "default"})
    assert matmul_precision(config) == "default"


def test_a_bad_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="matmul_precision"):
        resolve_config("sac", "Pendulum-v1", overrides={"matmul_precision": "float16"})


def _dot_precisions(jaxpr) -> set:
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.add(str(eqn.params["precision"]))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _dot_precisions(inner)
    return found


def test_the_precision_reaches_every_matrix_product_of_the_update():
    agent, buffer, _ = tiny_agent("sac", TINY_SAC)
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), 8, 1)
    key = jax.random.PRNGKey(1)
    plain = _dot_precisions(jax.make_jaxpr(agent.update)(state, batch, key).jaxpr)
    assert plain == {"None"}
    highest = with_matmul_precision(agent, "highest")
    traced = _dot_precisions(jax.make_jaxpr(highest.update)(state, batch, key).jaxpr)
    assert traced and all("HIGHEST" in precision for precision in traced)


def test_on_cpu_highest_and_default_give_the_same_bits():
    """CPU-exact by design: XLA:CPU multiplies float32 in full precision either way, so the
    per-agent choice changes nothing on a CPU (on a GPU, default means TF32)."""
    if jax.default_backend() != "cpu":
        pytest.skip("a statement about the CPU backend")
    agent, buffer, _ = tiny_agent("sac", TINY_SAC)
    state = agent.init(jax.random.PRNGKey(0))
    batch = buffer.sample(np.random.default_rng(0), 8, 2)
    key = jax.random.PRNGKey(1)
    default_state, default_metrics = agent.update(state, batch, key)
    highest_state, highest_metrics = with_matmul_precision(agent, "highest").update(
        state, batch, key
    )
    for a, b in zip(
        jax.tree_util.tree_leaves((default_state, default_metrics)),
        jax.tree_util.tree_leaves((highest_state, highest_metrics)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_make_agent_applies_the_runs_precision():
    config = resolve_config(
        "sac", "Pendulum-v1", overrides={**TINY_SAC, "matmul_precision": "highest"}
    )
    env = make_env("Pendulum-v1", seed=0)
    agent = make_agent(config, env.env_spec)
    state = agent.init(jax.random.PRNGKey(0))
    obs = np.zeros((1, env.env_spec.obs_dim), np.float32)
    jaxpr = jax.make_jaxpr(lambda s, o, k: agent.act(s, o, k, False))(
        state, obs, jax.random.PRNGKey(0)
    ).jaxpr
    assert all("HIGHEST" in precision for precision in _dot_precisions(jaxpr))

"""A pure-JAX stand-in for a MuJoCo Playground task, wrapped as an ``mjx:`` env: it runs the
device loop's step functions in seconds where MJX compiles for a minute. Needs no extra."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffmaxent.envs.mjx import MJXEnv


class DriftPhysics(NamedTuple):
    obs: jax.Array
    reward: jax.Array
    done: jax.Array


class DriftTask:
    """Playground's task interface (``reset(key)``, ``step(physics, action)``): a point in R^3
    pushed by a 1-d action; reward -|x|^2; it fails (``done``) past |x| = 2."""

    def reset(self, key):
        return DriftPhysics(jax.random.normal(key, (3,)) * 0.5, jnp.zeros(()), jnp.zeros(()))

    def step(self, physics, action):
        obs = physics.obs + 0.1 * action[0]
        reward = -jnp.sum(obs**2)
        return DriftPhysics(obs, reward, (jnp.abs(obs).max() > 2.0).astype(jnp.float32))


# Episodes of 6 steps, so that resets happen within a few compiled steps.
DRIFT_ENV = MJXEnv(
    env_id="mjx:Drift",
    task="Drift",
    impl="jax",
    action_repeat=1,
    episode_length=6,
    control_dt=0.01,
    obs_dim=3,
    action_dim=1,
    action_low=(-1.0,),
    action_high=(1.0,),
    playground_env=DriftTask(),
)

"""``diffmaxent bench``: what one update and one env step cost, and how close to the machine's
matmul rate the update runs.

An update is what the agent's loop calls between env steps: one gradient step on a replay batch
for replay agents, one ``update`` on a whole rollout (all its epochs and minibatches) for
on-policy agents. So that the two compare, the report also gives the update time per env step
(``updates_per_step`` replay updates per env step; one rollout update per
``num_envs * rollout_steps`` env steps).

Timings are medians over repeated calls after a warm-up (compile) call, each call ended with
``block_until_ready``. FLOPs are counted from the jaxpr: every ``dot_general`` contributes
``2 * prod(batch, free, contracted dims)``, and ``scan`` bodies count ``length`` times, so the
count covers samplers and backward passes (XLA's own cost analysis counts a loop body once).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent.api import resolve_config
from diffmaxent.buffer import ReplayBuffer
from diffmaxent.loops import REPLAY
from diffmaxent.loops.rollout import collect_rollout, make_vector_env
from diffmaxent.registry import get_algo, make_agent


def _dot_flops(eqn: Any) -> float:
    # Output elements already include batch and free dims; each needs one multiply-add per
    # contracted element.
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _jaxpr_flops(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else (param,):
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None and hasattr(inner, "eqns"):
                        total += _jaxpr_flops(inner)
                    elif hasattr(sub, "eqns"):
                        total += _jaxpr_flops(sub)
    return total


def matmul_flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matrix-multiply FLOPs of one call of ``fn(*args)`` (loops unrolled in the count)."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` (its outputs blocked on) over ``repeats`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_rate(rows: int = 65_536, width: int = 256, repeats: int = 10) -> float:
    """The machine's plain float32 matmul rate in FLOP/s: ``[rows, width] @ [width, width]``,
    the shape of one hidden layer applied to many candidate actions."""
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (rows, width), jnp.float32)
    b = jax.random.normal(key_b, (width, width), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = median_seconds(lambda: matmul(a, b), repeats, warmup=2)
    return 2.0 * rows * width * width / seconds


@dataclasses.dataclass
class BenchResult:
    algo: str
    preset: str
    env: str
    update_seconds: float
    update_flops: float
    env_step_seconds: float
    matmul_flops_per_second: float
    phases: dict[str, tuple[float, float]]  # name -> (median seconds, matmul FLOPs)
    updates_per_env_step: float = 1.0
    update_label: str = "1 gradient step"

    @property
    def update_seconds_per_env_step(self) -> float:
        return self.update_seconds * self.updates_per_env_step

    def lines(self) -> list[str]:
        rate = self.update_flops / self.update_seconds if self.update_seconds > 0 else 0.0
        update_head = f"update ({self.update_label}):"
        out = [
            f"{self.algo} (preset {self.preset}) on {self.env}, backend {jax.default_backend()}",
            f"{update_head:<30}{1e3 * self.update_seconds:9.2f} ms median, "
            f"{self.update_flops / 1e9:8.3f} GFLOP matmul, {rate / 1e9:7.1f} GFLOP/s",
            f"update per env step:          {1e3 * self.update_seconds_per_env_step:9.3f} ms",
            f"env step (act + simulate):    {1e3 * self.env_step_seconds:9.3f} ms median",
            f"plain float32 matmul rate:    {self.matmul_flops_per_second / 1e9:9.1f} GFLOP/s; "
            f"the update reaches {rate / self.matmul_flops_per_second:.0%} of it",
        ]
        for name, (seconds, flops) in self.phases.items():
            share = seconds / self.update_seconds if self.update_seconds > 0 else 0.0
            out.append(
                f"  {name:<28} {1e3 * seconds:9.2f} ms ({share:4.0%} of update), "
                f"{flops / 1e9:8.3f} GFLOP"
            )
        return out


def run_bench(
    algo: str,
    env_id: str,
    *,
    preset: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    repeats: int = 10,
    env_steps: int = 200,
    seed: int = 0,
) -> BenchResult:
    """Time one update (and each named phase the agent exposes) and one env step."""
    config = resolve_config(algo, env_id, preset=preset, overrides=overrides, seed=seed)
    if get_algo(algo).loop is not REPLAY:
        return _bench_rollout_agent(algo, preset, env_id, config, repeats, seed)
    env = config.make_env(seed)
    spec = env.env_spec
    agent = make_agent(config, spec)
    key = jax.random.PRNGKey(seed)
    state = agent.init(key)

    buffer = ReplayBuffer(max(2_000, config.loop.batch_size), spec.obs_dim, spec.action_dim)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset()
    for _ in range(buffer.capacity):
        action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    batches = jax.device_put(buffer.sample(rng, config.loop.batch_size, 1))

    update_seconds = median_seconds(lambda: agent.update(state, batches, key), repeats)
    update_flops = matmul_flops(agent.update, state, batches, key)
    single = jax.tree_util.tree_map(lambda x: x[0], batches)
    phases = {
        name: (
            median_seconds(lambda f=fn: f(state, single, key), repeats),
            matmul_flops(fn, state, single, key),
        )
        for name, fn in agent.phases.items()
    }

    act_keys = iter(jax.random.split(key, env_steps + 3))

    def one_env_step() -> None:
        nonlocal obs
        action = np.asarray(agent.act(state, obs[None], next(act_keys), False))[0]
        next_obs, _, terminated, truncated, _ = env.step(action)
        obs = env.reset()[0] if terminated or truncated else next_obs

    env_step_seconds = median_seconds(one_env_step, env_steps, warmup=3)
    env.close()
    return BenchResult(
        algo=algo,
        preset=preset,
        env=env_id,
        update_seconds=update_seconds,
        update_flops=update_flops,
        env_step_seconds=env_step_seconds,
        matmul_flops_per_second=matmul_rate(),
        phases=phases,
        updates_per_env_step=float(config.loop.updates_per_step),
    )


def _bench_rollout_agent(
    algo: str, preset: str, env_id: str, config: Any, repeats: int, seed: int
) -> BenchResult:
    """Time one ``update`` on a rollout of the loop's size, and env steps as the rollout loop
    takes them (one ``collect`` call per vector step of ``num_envs`` envs)."""
    loop = config.loop
    spec_env = config.make_env(seed)
    agent = make_agent(config, spec_env.env_spec)
    spec_env.close()
    envs = make_vector_env(env_id, loop.num_envs, seed, loop.action_repeat)
    key = jax.random.PRNGKey(seed)
    state = agent.init(key)
    obs = np.asarray(envs.reset()[0], np.float32)
    rollout, obs, key = collect_rollout(agent, state, envs, obs, key, loop.rollout_steps)

    update_seconds = median_seconds(lambda: agent.update(state, rollout, key), repeats)
    update_flops = matmul_flops(agent.update, state, rollout, key)

    vector_steps = 10

    def some_env_steps() -> None:
        nonlocal obs, key
        steps, obs, key = collect_rollout(agent, state, envs, obs, key, vector_steps)
        jax.block_until_ready(steps.extras)

    env_step_seconds = median_seconds(some_env_steps, repeats) / (vector_steps * loop.num_envs)
    envs.close()
    steps_per_rollout = loop.num_envs * loop.rollout_steps
    return BenchResult(
        algo=algo,
        preset=preset,
        env=env_id,
        update_seconds=update_seconds,
        update_flops=update_flops,
        env_step_seconds=env_step_seconds,
        matmul_flops_per_second=matmul_rate(),
        phases={},
        updates_per_env_step=1.0 / steps_per_rollout,
        update_label=f"rollout of {steps_per_rollout} env steps",
    )

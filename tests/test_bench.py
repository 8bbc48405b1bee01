"""The benchmark's FLOP counter and command (timings are reported, never asserted)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffmaxent.bench import matmul_flops, run_bench
from diffmaxent.cli import main


def test_flop_count_includes_every_scan_iteration_and_the_backward_pass():
    a = jnp.ones((64, 32))
    b = jnp.ones((32, 32))
    one = 2 * 64 * 32 * 32

    def chain(a, b):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ b), None), a, None, length=10)[0]

    assert matmul_flops(lambda a, b: a @ b, a, b) == one
    assert matmul_flops(chain, a, b) == 10 * one
    # Reverse mode w.r.t. b only: the forward product plus one transposed product (a^T @ g).
    assert matmul_flops(jax.grad(lambda b, a: jnp.sum(a @ b)), b, a) == 2 * one
    batched = jnp.ones((5, 64, 32))
    assert matmul_flops(lambda x, b: jnp.einsum("nij,jk->nik", x, b), batched, b) == 5 * one


def test_bench_reports_update_env_step_and_phases(capsys):
    result = run_bench(
        "sac",
        "Pendulum-v1",
        overrides={"actor_hidden_dims": "16,16", "critic_hidden_dims": "16,16", "batch_size": 8},
        repeats=2,
        env_steps=5,
    )
    assert set(result.phases) == {"critic step", "actor step"}
    assert result.update_seconds > 0 and result.env_step_seconds > 0
    assert result.update_flops > sum(flops for _, flops in result.phases.values()) * 0.9
    assert (
        main(
            [
                "bench",
                "--algo",
                "sac",
                "--env",
                "Pendulum-v1",
                "--repeats",
                "1",
                "--set",
                "actor_hidden_dims=8,8",
                "--set",
                "critic_hidden_dims=8,8",
                "--set",
                "batch_size=8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "matmul rate" in out and "critic step" in out


def test_bench_times_a_rollout_update_of_an_on_policy_agent():
    result = run_bench(
        "ppo",
        "Pendulum-v1",
        overrides={
            "actor_hidden_dims": "8,8",
            "critic_hidden_dims": "8,8",
            "num_envs": 2,
            "rollout_steps": 16,
            "batch_size": 8,
        },
        repeats=2,
    )
    assert result.update_label == "rollout of 32 env steps"
    assert result.update_seconds_per_env_step == result.update_seconds / 32
    assert result.update_flops > 0 and result.env_step_seconds > 0
    assert any(line.startswith("update per env step") for line in result.lines())

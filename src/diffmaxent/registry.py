"""The algorithm registry: ``ALGOS[name]`` says how to configure, build and train an algorithm.

A new agent joins the library (the CLI, the API and the registry-wide contract tests) by one
entry in :data:`ALGOS`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from diffmaxent.agents import (
    bro,
    crossq,
    dacer,
    diffppo,
    diffsac,
    diffwpo,
    dime,
    dipo,
    maxentdp,
    meow,
    ppo,
    qsm,
    qvpo,
    sac,
    td3,
)
from diffmaxent.agents.common import Agent, with_matmul_precision
from diffmaxent.config import Preset
from diffmaxent.envs.mjx import MJX_PREFIX
from diffmaxent.envs.spec import EnvSpec
from diffmaxent.errors import UsageError
from diffmaxent.loops import DEVICE_LOOPS, REPLAY, ROLLOUT, Loop, device
from diffmaxent.loops.bookkeeping import ResolvedConfig


@dataclasses.dataclass(frozen=True)
class AlgoSpec:
    """One algorithm: its config class, ``make(config, env_spec)`` building its pure functions,
    its presets, the loop that trains it, ``config_warnings(config)``: one line for each
    setting that runs but misleads (shown when a config is resolved), and the float32 matmul
    precision that ``matmul_precision=auto`` means for it (docs/benchmarks.md, "GPU numerics")."""

    name: str
    description: str
    config_cls: type
    make: Callable[[Any, EnvSpec], Any]
    presets: Mapping[str, Preset]
    loop: Loop
    config_warnings: Callable[[Any], list[str]] = lambda config: []
    matmul_precision: str = "default"


ALGOS: dict[str, AlgoSpec] = {
    spec.name: spec
    for spec in (
        AlgoSpec(
            "sac",
            "Soft Actor-Critic, tanh-Gaussian policy, twin critics, auto temperature",
            sac.SACConfig,
            sac.make,
            sac.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "maxentdp",
            "MaxEntDP: diffusion policy, Q-weighted noise estimation, numerical log-prob",
            maxentdp.MaxEntDPConfig,
            maxentdp.make,
            maxentdp.PRESETS,
            REPLAY,
            maxentdp.config_warnings,
            # The QNE weights softmax(Q / beta) turn TF32's ~0.1 error at |Q| ~ 300 into a
            # factor e^10 at beta = 0.01.
            matmul_precision="highest",
        ),
        AlgoSpec(
            "dime",
            "DIME: diffusion policy, path-space entropy bound, CrossQ distributional critic",
            dime.DIMEConfig,
            dime.make,
            dime.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "crossq",
            "Gaussian SAC policy with DIME's CrossQ critic (BatchRenorm, no target network)",
            crossq.CrossQConfig,
            crossq.make,
            crossq.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "ppo",
            "PPO, Gaussian policy, GAE, clipped ratio (the DMERL on-policy baseline)",
            ppo.PPOConfig,
            ppo.make,
            ppo.PRESETS,
            ROLLOUT,
        ),
        AlgoSpec(
            "diffppo",
            "DiffPPO (DMERL): PPO on the diffusion-augmented MDP, K Gaussian kernels",
            diffppo.DiffPPOConfig,
            diffppo.make,
            diffppo.PRESETS,
            ROLLOUT,
        ),
        AlgoSpec(
            "diffsac",
            "DiffSAC (DMERL): SAC on the diffusion-augmented MDP, per-level soft Q",
            diffsac.DiffSACConfig,
            diffsac.make,
            diffsac.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "diffwpo",
            "DiffWPO (DMERL): Wasserstein policy step per denoising kernel, KL trust region",
            diffwpo.DiffWPOConfig,
            diffwpo.make,
            diffwpo.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "qvpo",
            "QVPO: diffusion policy, Q-weighted denoising loss, uniform-action entropy term",
            qvpo.QVPOConfig,
            qvpo.make,
            qvpo.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "qsm",
            "QSM: diffusion policy whose noise model is matched to the critic's action gradient",
            qsm.QSMConfig,
            qsm.make,
            qsm.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "dipo",
            "DIPO: diffusion policy cloning replay actions improved by gradient ascent on Q",
            dipo.DIPOConfig,
            dipo.make,
            dipo.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "dacer",
            "DACER: diffusion policy, Q backpropagated through the chain, GMM entropy regulator",
            dacer.DACERConfig,
            dacer.make,
            dacer.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "bro",
            "BRO: BroNet quantile critics, optimistic dual-policy exploration, resets, high UTD",
            bro.BROConfig,
            bro.make,
            bro.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "td3",
            "TD3: deterministic actor, clipped double-Q, target policy smoothing, delayed actor",
            td3.TD3Config,
            td3.make,
            td3.PRESETS,
            REPLAY,
        ),
        AlgoSpec(
            "meow",
            "MEow: one energy-based normalising flow as policy and soft Q, exact soft value",
            meow.MEowConfig,
            meow.make,
            meow.PRESETS,
            REPLAY,
        ),
    )
}


def get_algo(name: str) -> AlgoSpec:
    if name not in ALGOS:
        raise UsageError(f"unknown algo {name!r}; accepted: {', '.join(ALGOS)}")
    return ALGOS[name]


def loop_for(spec: AlgoSpec, env: str) -> Loop:
    """The loop that trains ``spec`` on ``env``: on ``mjx:`` envs the device loop, else its
    own."""
    return DEVICE_LOOPS[spec.loop.name] if env.startswith(MJX_PREFIX) else spec.loop


def matmul_precision(config: ResolvedConfig) -> str:
    """The precision a run's agent is traced at: its ``matmul_precision``, ``auto`` resolved to
    the algorithm's own choice."""
    chosen = config.loop.matmul_precision
    return get_algo(config.algo).matmul_precision if chosen == "auto" else chosen


def make_agent(config: ResolvedConfig, env_spec: EnvSpec) -> Agent:
    """The agent of a resolved run config, its functions traced at the run's matmul precision.

    An agent is a set of pure functions of its builder, config, env spec and precision, so runs
    of one configuration in a process (seeds one after another, ``compare``, ``reproduce``,
    ``load`` after ``train``, tests) get the same agent and share its compiled programs; the
    last :data:`BUILT_AGENTS_KEPT` configurations are kept.

    Raises:
        UsageError: on an ``mjx:`` env, settings the device loop cannot train with.
    """
    if config.env.startswith(MJX_PREFIX):
        device.check_run(config)
    make = get_algo(config.algo).make
    return _built_agent(make, config.agent, env_spec, matmul_precision(config))


BUILT_AGENTS_KEPT = 32


@functools.lru_cache(maxsize=BUILT_AGENTS_KEPT)
def _built_agent(
    make: Callable[[Any, EnvSpec], Agent], agent_config: Any, env_spec: EnvSpec, precision: str
) -> Agent:
    # Keyed on the registered builder itself, not the algorithm's name: an entry of ALGOS
    # replaced by another builder (a wrapped or patched agent) is another agent.
    return with_matmul_precision(make(agent_config, env_spec), precision)

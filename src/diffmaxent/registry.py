"""The algorithm registry: ``ALGOS[name]`` says how to configure, build and train an algorithm.

A new agent joins the library (the CLI, the API and the registry-wide contract tests) by one
entry in :data:`ALGOS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from diffmaxent.agents import crossq, diffppo, diffsac, diffwpo, dime, maxentdp, ppo, sac
from diffmaxent.config import Preset
from diffmaxent.envs.factory import EnvSpec
from diffmaxent.errors import UsageError
from diffmaxent.loops import REPLAY, ROLLOUT, Loop


@dataclasses.dataclass(frozen=True)
class AlgoSpec:
    """One algorithm: its config class, ``make(config, env_spec)`` building its pure functions,
    its presets, the loop that trains it, and ``config_warnings(config)``: one line for each
    setting that runs but misleads (shown when a config is resolved)."""

    name: str
    description: str
    config_cls: type
    make: Callable[[Any, EnvSpec], Any]
    presets: Mapping[str, Preset]
    loop: Loop
    config_warnings: Callable[[Any], list[str]] = lambda config: []


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
    )
}


def get_algo(name: str) -> AlgoSpec:
    if name not in ALGOS:
        raise UsageError(f"unknown algo {name!r}; accepted: {', '.join(ALGOS)}")
    return ALGOS[name]

"""The Python API that ``diffmaxent`` commands mirror: resolve a config, train, load a run.

``train`` resolves and validates every input before it writes anything, builds the agent from the
registry and hands it to the algorithm's loop; ``load`` rebuilds a trained agent from a run
directory.
"""

from __future__ import annotations

import datetime
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffmaxent import checkpoint, runs
from diffmaxent.config import (
    describe_fields,
    field_types,
    preset_values,
    replace_validated,
)
from diffmaxent.envs import env_suite
from diffmaxent.envs.factory import EnvSpec
from diffmaxent.errors import PresetSuiteWarning, UsageError
from diffmaxent.loops.bookkeeping import ResolvedConfig, RunSetup, TrainResult
from diffmaxent.registry import AlgoSpec, get_algo

# `diffmaxent train` with no arguments: MaxEntDP on the multi-goal task of the paper's Fig. 1.
DEFAULT_ALGO = "maxentdp"
DEFAULT_ENV = "MultiGoal-v0"
DEFAULT_STEPS = 6_000
DEFAULT_PRESET = "cpu"


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def resolve_config(
    algo: str = DEFAULT_ALGO,
    env: str = DEFAULT_ENV,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
) -> ResolvedConfig:
    """Apply preset then overrides to the agent and loop configs, validating every name and value.

    Raises:
        UsageError: unknown algo, preset or hyperparameter, or a bad value.
    """
    spec = get_algo(algo)
    steps = _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    values = {**preset_values(spec.presets, preset, env), **dict(overrides or {})}
    warn_if_wrong_suite(spec, preset, env)
    agent_names = set(field_types(spec.config_cls))
    loop_names = set(field_types(spec.loop.config_cls))
    unknown = sorted(set(values) - agent_names - loop_names)
    if unknown:
        accepted = ", ".join(sorted(agent_names | loop_names))
        raise UsageError(f"unknown hyperparameter {unknown[0]!r} for {algo}; accepted: {accepted}")
    agent_config = replace_validated(
        spec.config_cls(), {k: v for k, v in values.items() if k in agent_names}
    )
    loop_config = replace_validated(
        spec.loop.config_cls(), {k: v for k, v in values.items() if k in loop_names}
    )
    return ResolvedConfig(algo, env, preset, seed, steps, agent_config, loop_config)


def warn_if_wrong_suite(spec: AlgoSpec, preset: str, env: str) -> None:
    """Warn (:class:`PresetSuiteWarning`) when ``preset`` was tuned on another suite than env's."""
    suite, env_is = spec.presets[preset].suite, env_suite(env)
    if suite is not None and suite != env_is:
        others = [name for name, p in spec.presets.items() if p.suite == env_is]
        hint = f"; for {env_is} envs use {' or '.join(others)}" if others else ""
        warnings.warn(
            f"preset {preset!r} of {spec.name} holds {suite} settings, but {env} is a "
            f"{env_is} env{hint}",
            PresetSuiteWarning,
            stacklevel=3,
        )


def config_from_json(data: Mapping[str, Any]) -> ResolvedConfig:
    """Rebuild a :class:`ResolvedConfig` from ``config.json``."""
    spec = get_algo(data["algo"])
    return ResolvedConfig(
        algo=data["algo"],
        env=data["env"],
        preset=data["preset"],
        seed=data["seed"],
        steps=data["steps"],
        agent=replace_validated(spec.config_cls(), data["agent"]),
        loop=replace_validated(spec.loop.config_cls(), data["loop"]),
    )


def hyperparameter_table(algo: str) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, help)`` for every hyperparameter of ``algo`` (agent, then loop)."""
    spec = get_algo(algo)
    return describe_fields(spec.config_cls) + describe_fields(spec.loop.config_cls)


def default_run_directory(algo: str, env: str, seed: int) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_env = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
    return Path("runs") / f"{algo}-{safe_env}-seed{seed}-{stamp}"


def train(
    algo: str = DEFAULT_ALGO,
    env: str = DEFAULT_ENV,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    out: str | Path | None = None,
    preset: str = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``algo`` on ``env`` and write a run directory (mirrors ``diffmaxent train``).

    Args:
        algo: a name from ``diffmaxent.ALGOS``.
        env: a Gymnasium id (``MultiGoal-v0``, ``Pendulum-v1``, ``module:Env-v0``, ...),
            ``dmc:DOMAIN-TASK`` or ``myo:ENV_ID``.
        steps: env steps to train for.
        seed: seeds the agent, the envs and the replay sampling.
        out: run directory; default ``runs/<algo>-<env>-seed<seed>-<timestamp>``.
        preset: a preset name of ``algo`` (``diffmaxent presets ALGO`` lists them).
        overrides: hyperparameter values applied after the preset (numbers or strings).
        force: replace a run already in ``out`` (other files there are kept).
        progress: True for a progress bar, False for silence, None for a bar on a terminal and
            one line per evaluation otherwise.

    Returns:
        The run directory, the final evaluation and all metric rows.

    Raises:
        UsageError: for any bad input; nothing is written in that case.
    """
    config = resolve_config(algo, env, steps=steps, seed=seed, preset=preset, overrides=overrides)
    run_dir = Path(out) if out is not None else default_run_directory(algo, env, seed)
    runs.check_output_directory(run_dir, force)
    probe = config.make_env(seed)
    env_spec = probe.env_spec
    probe.close()
    spec = get_algo(algo)
    agent = spec.make(config.agent, env_spec)

    runs.prepare_output_directory(run_dir, force)
    runs.write_json(run_dir / runs.CONFIG_FILE, config.to_json(env_spec))
    return spec.loop.run(RunSetup(config, env_spec, run_dir, progress), agent)


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
        agent: Any,
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

"""The Python API that ``diffmaxent`` commands mirror: resolve a config, train, load a run.

``train`` resolves and validates every input before it writes anything, builds the agent from the
registry and hands it to the algorithm's loop; ``load`` rebuilds a trained agent from a run
directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import re
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping
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
from diffmaxent.errors import DamagedFileWarning, PresetSuiteWarning, TrainingStopped, UsageError
from diffmaxent.loops.bookkeeping import ResolvedConfig, RunSetup, StopRequest, TrainResult
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
    """Rebuild a :class:`ResolvedConfig` from ``config.json``.

    Raises:
        UsageError: a field is missing or invalid.
    """
    try:
        spec = get_algo(data["algo"])
        return ResolvedConfig(
            algo=data["algo"],
            env=data["env"],
            preset=data["preset"],
            seed=_check_int("seed", data["seed"], 0),
            steps=_check_int("steps", data["steps"], 1),
            agent=replace_validated(spec.config_cls(), data["agent"]),
            loop=replace_validated(spec.loop.config_cls(), data["loop"]),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"not a run config: {type(error).__name__} {error}") from None


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
    steps: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    preset: str = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: bool | None = None,
    resume: str | Path | None = None,
) -> TrainResult:
    """Train ``algo`` on ``env`` and write a run directory, or continue a run (mirrors
    ``diffmaxent train``).

    Args:
        algo: a name from ``diffmaxent.ALGOS``.
        env: a Gymnasium id (``MultiGoal-v0``, ``Pendulum-v1``, ``module:Env-v0``, ...),
            ``dmc:DOMAIN-TASK`` or ``myo:ENV_ID``.
        steps: env steps to train for (default 6000); with ``resume``, the new total (default:
            the run's own).
        seed: seeds the agent, the envs and the replay sampling.
        out: run directory; default ``runs/<algo>-<env>-seed<seed>-<timestamp>``.
        preset: a preset name of ``algo`` (``diffmaxent presets ALGO`` lists them).
        overrides: hyperparameter values applied after the preset (numbers or strings).
        force: replace a run already in ``out`` (its own files only; other files are kept), once
            this run holds the directory's lock and its config is valid.
        progress: True for a progress bar, False for silence, None for a bar on a terminal and
            one line per evaluation otherwise.
        resume: a run directory to continue from its newest intact checkpoint, with its own
            settings (only ``steps`` may change); the rows it writes from the checkpoint on are
            those the uninterrupted run would have written.

    Returns:
        The run directory, the final evaluation and all metric rows.

    Raises:
        UsageError: for any bad input (nothing is written then), a run directory in use by
            another process, or no intact checkpoint to resume from.
        TrainingInterrupted: SIGINT or SIGTERM arrived; a checkpoint was written at the step.
        TrainingDiverged: a NaN or Inf appeared; the last finite checkpoint is kept.
    """
    if resume is not None:
        if (algo, env, seed, preset, out, force) != (
            DEFAULT_ALGO,
            DEFAULT_ENV,
            0,
            DEFAULT_PRESET,
            None,
            False,
        ) or overrides:
            raise UsageError(
                "--resume continues a run with its own settings; only --steps may be given"
            )
        return _resume(Path(resume), steps, progress)
    steps = DEFAULT_STEPS if steps is None else steps
    config = resolve_config(algo, env, steps=steps, seed=seed, preset=preset, overrides=overrides)
    run_dir = Path(out) if out is not None else default_run_directory(algo, env, seed)
    runs.check_output_directory(run_dir, force)
    env_spec = _env_spec(config)
    spec = get_algo(algo)
    agent = spec.make(config.agent, env_spec)

    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = runs.RunLock(run_dir).acquire()
    except UsageError:
        if created:
            run_dir.rmdir()
        raise
    try:
        # Checked again under the lock: a run may have finished there since the check above.
        runs.check_output_directory(run_dir, force)
        runs.remove_run(run_dir)
        runs.write_json(run_dir / runs.CONFIG_FILE, config.to_json(env_spec))
        runs.write_status(run_dir, "running", 0)
        return _run(spec, RunSetup(config, env_spec, run_dir, progress), agent)
    finally:
        lock.release()


def _env_spec(config: ResolvedConfig) -> EnvSpec:
    probe = config.make_env(config.seed)
    try:
        return probe.env_spec
    finally:
        probe.close()


def _resume(run_dir: Path, steps: int | None, progress: bool | None) -> TrainResult:
    if not run_dir.is_dir() or not runs.holds_run(run_dir):
        raise UsageError(f"cannot resume {str(run_dir)!r}: it is not a run directory")
    with runs.RunLock(run_dir):
        config, env_spec = run_config(run_dir)
        done = config.steps
        if steps is not None:
            config = dataclasses.replace(config, steps=_check_int("steps", steps, 1))
        try:
            status = runs.read_json(run_dir / runs.STATUS_FILE)
        except runs.DamagedFileError:
            status = {}
        if status.get("status") == "complete" and config.steps <= done:
            raise UsageError(
                f"run {str(run_dir)!r} is complete ({done} steps); pass --steps with a larger "
                "total to train it longer"
            )
        spec = get_algo(config.algo)
        agent = spec.make(config.agent, env_spec)
        setup = RunSetup(config, env_spec, run_dir, progress, resume=True)
        return _run(spec, setup, agent)


def _run(spec: AlgoSpec, setup: RunSetup, agent: Any) -> TrainResult:
    """The loop, with SIGINT / SIGTERM turned into a checkpoint and a clean stop, and the run's
    status recorded however it ends."""
    try:
        with stop_on_signals(setup.stop):
            return spec.loop.run(setup, agent)
    except (TrainingStopped, UsageError):
        raise  # the recorder wrote the status, or nothing was changed
    except KeyboardInterrupt:
        _record_status(setup.run_dir, "interrupted", "a second signal stopped it at once")
        raise
    except BaseException as error:
        _record_status(setup.run_dir, "failed", f"{type(error).__name__}: {error}")
        raise


def _record_status(run_dir: Path, status: str, message: str) -> None:
    try:
        step = runs.read_json(run_dir / runs.STATUS_FILE).get("env_step", 0)
        runs.write_status(run_dir, status, step, message=" ".join(message.split()))
    except (OSError, UsageError):
        pass  # the run's own error is the one to report


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """While training: the first SIGINT or SIGTERM sets ``stop`` (the loop finishes its step,
    writes a checkpoint and raises :class:`TrainingInterrupted`); a second one stops at once
    (KeyboardInterrupt). Outside the main thread signals cannot be caught and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _parse_run_config(data: Mapping[str, Any], where: Path) -> tuple[ResolvedConfig, EnvSpec]:
    try:
        config = config_from_json(data)
        env_spec = EnvSpec(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data["env_spec"].items()}
        )
    except (UsageError, KeyError, TypeError, AttributeError) as error:
        raise runs.DamagedFileError(f"{where} is not a run config ({error})") from None
    return config, env_spec


def run_config(run_dir: Path) -> tuple[ResolvedConfig, EnvSpec]:
    """The config and env of a run from ``config.json``; if that is damaged, from the newest
    checkpoint that holds an intact one (with a one-line warning).

    Raises:
        UsageError: not a run directory, or no intact config anywhere.
    """
    try:
        return _parse_run_config(runs.read_run_config(run_dir), run_dir / runs.CONFIG_FILE)
    except runs.DamagedFileError as error:

        def read(directory: Path) -> tuple[ResolvedConfig, EnvSpec]:
            meta = checkpoint.read_meta(directory)
            try:
                return _parse_run_config(meta["config"], directory / checkpoint.META_FILE)
            except runs.DamagedFileError as damaged:
                raise checkpoint.DamagedCheckpoint(str(damaged)) from None

        try:
            directory, parsed = checkpoint.newest_intact(
                run_dir / runs.CHECKPOINT_DIR, read, run_dir
            )
        except UsageError:
            raise error from None
        warnings.warn(
            f"{error}; using the config saved in {directory}", DamagedFileWarning, stacklevel=2
        )
        return parsed


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
        if not np.all(np.isfinite(batch)):
            raise ValueError("obs holds NaN or Inf; the policy needs finite observations")
        self._key, key = jax.random.split(self._key)
        action = np.asarray(self.agent.act(self.state, batch, key, deterministic))
        env_action = self.env_spec.to_env_action(action)
        return env_action[0] if single else env_action


def load(
    run_dir: str | Path, checkpoint_dir: str | Path | None = None, seed: int = 0
) -> LoadedAgent:
    """Load the newest intact checkpoint of a run (or the given checkpoint directory); damaged
    ones are skipped with a one-line warning.

    Raises:
        UsageError: not a run directory, a damaged config with no intact checkpoint to take it
            from, no intact checkpoint, or a damaged ``checkpoint_dir``.
    """
    run_dir = Path(run_dir)
    config, env_spec = run_config(run_dir)
    agent = get_algo(config.algo).make(config.agent, env_spec)
    template = agent.init(jax.random.PRNGKey(0))

    def read(directory: Path) -> tuple[Any, int]:
        meta = checkpoint.read_meta(directory)
        return checkpoint.restore(directory, template), meta["env_step"]

    if checkpoint_dir is None:
        _, (state, env_step) = checkpoint.newest_intact(
            run_dir / runs.CHECKPOINT_DIR, read, run_dir
        )
    else:
        try:
            state, env_step = read(Path(checkpoint_dir))
        except checkpoint.DamagedCheckpoint as error:
            raise UsageError(f"checkpoint {checkpoint_dir} is damaged ({error})") from None
    return LoadedAgent(config, env_spec, agent, state, env_step, seed=seed)

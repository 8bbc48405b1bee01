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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffmaxent import checkpoint, runs, trackers
from diffmaxent.config import (
    describe_fields,
    field_types,
    preset_values,
    replace_validated,
)
from diffmaxent.envs import env_suite
from diffmaxent.envs.factory import EnvSpec, paper_env_warning
from diffmaxent.errors import (
    BiasedEstimatorWarning,
    DamagedFileWarning,
    PaperEnvWarning,
    PresetSuiteWarning,
    TrainingStopped,
    UsageError,
)
from diffmaxent.loops import DEVICE_LOOPS
from diffmaxent.loops.bookkeeping import (
    GroupResult,
    ResolvedConfig,
    RunSetup,
    StopRequest,
    TrainResult,
)
from diffmaxent.loops.seeds import SEED_BATCHING
from diffmaxent.registry import AlgoSpec, get_algo, loop_for, make_agent

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
    loop = loop_for(spec, env)
    loop_names = set(field_types(loop.config_cls))
    unknown = sorted(set(values) - agent_names - loop_names)
    device_only = sorted(set(unknown) & _device_only_fields(spec))
    if device_only:
        raise UsageError(
            f"{device_only[0]!r} is a setting of the device loop, which trains {algo} on mjx: "
            f"envs only; {env} trains on the {loop.name} loop"
        )
    if unknown:
        accepted = ", ".join(sorted(agent_names | loop_names))
        raise UsageError(f"unknown hyperparameter {unknown[0]!r} for {algo}; accepted: {accepted}")
    agent_config = replace_validated(
        spec.config_cls(), {k: v for k, v in values.items() if k in agent_names}
    )
    loop_config = replace_validated(
        loop.config_cls(), {k: v for k, v in values.items() if k in loop_names}
    )
    for message in spec.config_warnings(agent_config):
        warnings.warn(message, BiasedEstimatorWarning, stacklevel=2)
    return ResolvedConfig(algo, env, preset, seed, steps, agent_config, loop_config)


def warn_if_wrong_suite(spec: AlgoSpec, preset: str, env: str) -> None:
    """Warn (:class:`PresetSuiteWarning`) when ``preset`` was tuned on another suite than env's,
    and (:class:`PaperEnvWarning`) when a Gym preset from the papers meets a Gym version whose
    observations or rewards differ from the papers' v3."""
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
    paper_env = paper_env_warning(env) if suite == "gym" else None
    if paper_env is not None:
        warnings.warn(f"preset {preset!r}: {paper_env}", PaperEnvWarning, stacklevel=3)


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
            loop=replace_validated(loop_for(spec, data["env"]).config_cls(), data["loop"]),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"not a run config: {type(error).__name__} {error}") from None


# Appended to the help of a setting only the device loop has (``mjx:`` envs).
DEVICE_ONLY_NOTE = " (mjx: envs only)"


def hyperparameter_table(algo: str, env: str | None = None) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, help)`` for every hyperparameter of ``algo`` (agent, then loop):
    those of the loop that trains it on ``env``, or without ``env`` those of its host loop and
    then the device loop's own (``mjx:`` envs), whose help says so."""
    spec = get_algo(algo)
    rows = describe_fields(spec.config_cls)
    if env is not None:
        return rows + describe_fields(loop_for(spec, env).config_cls)
    device_only = _device_only_fields(spec)
    return (
        rows
        + describe_fields(spec.loop.config_cls)
        + [
            (name, type_name, default, help_text + DEVICE_ONLY_NOTE)
            for name, type_name, default, help_text in describe_fields(
                DEVICE_LOOPS[spec.loop.name].config_cls
            )
            if name in device_only
        ]
    )


def _device_only_fields(spec: AlgoSpec) -> set[str]:
    """Settings of the device loop that ``spec``'s host loop does not have."""
    device_loop = DEVICE_LOOPS[spec.loop.name]
    return set(field_types(device_loop.config_cls)) - set(field_types(spec.loop.config_cls))


def default_run_directory(algo: str, env: str, seed: int | Sequence[int]) -> Path:
    """``runs/<algo>-<env>-seed<seed>-<time>``; for seeds trained together
    ``runs/<algo>-<env>-seeds<seeds>-<time>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_env = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
    which = f"seed{seed}" if isinstance(seed, int) else f"seeds{format_seeds(seed)}"
    return Path("runs") / f"{algo}-{safe_env}-{which}-{stamp}"


def format_seeds(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 4]`` -> ``"0-4"``, ``[0, 3, 7]`` -> ``"0,3,7"`` (what ``--seeds`` reads)."""
    parts, ordered = [], sorted(seeds)
    start = previous = ordered[0]
    for seed in [*ordered[1:], None]:
        if seed is not None and seed == previous + 1:
            previous = seed
            continue
        parts.append(f"{start}-{previous}" if previous > start else str(start))
        if seed is not None:
            start = previous = seed
    return ",".join(parts)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,3,7"``; ranges and single seeds can be mixed.

    Raises:
        UsageError: not such a list, a negative or repeated seed.
    """
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise UsageError(f"--seeds expects seeds like 0-4 or 0,3,7, got {text!r}")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise UsageError(f"--seeds: the range {part.strip()!r} is empty")
        seeds.extend(range(first, last + 1))
    return check_seeds(seeds)


def check_seeds(seeds: Any) -> list[int]:
    """``seeds`` as a list of distinct integers >= 0.

    Raises:
        UsageError: not a non-empty list of them.
    """
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise UsageError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    checked = [_check_int("seed", seed, 0) for seed in seeds]
    repeated = sorted({seed for seed in checked if checked.count(seed) > 1})
    if repeated:
        raise UsageError(f"seed {repeated[0]} is given twice")
    return checked


def train(
    algo: str = DEFAULT_ALGO,
    env: str = DEFAULT_ENV,
    *,
    steps: int | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    out: str | Path | None = None,
    preset: str = DEFAULT_PRESET,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: bool | None = None,
    resume: str | Path | None = None,
    wandb: bool = False,
    seed_batching: str = "auto",
) -> TrainResult | GroupResult:
    """Train ``algo`` on ``env`` and write a run directory, or continue a run (mirrors
    ``diffmaxent train``).

    Args:
        algo: a name from ``diffmaxent.ALGOS``.
        env: a Gymnasium id (``MultiGoal-v0``, ``Pendulum-v1``, ``module:Env-v0``, ...),
            ``dmc:DOMAIN-TASK`` or ``myo:ENV_ID``.
        steps: env steps to train for (default 6000); with ``resume``, the new total (default:
            the run's own).
        seed: seeds the agent, the envs and the replay sampling.
        seeds: instead of ``seed``, several seeds trained together in one process (one jitted
            update vmapped over a seed axis, one env and buffer per seed); ``out`` is then a
            group directory holding an ordinary run directory ``seed<N>`` per seed, and a
            :class:`GroupResult` is returned.
        out: run directory; default ``runs/<algo>-<env>-seed<seed>-<timestamp>`` (with
            ``seeds``: ``runs/<algo>-<env>-seeds<seeds>-<timestamp>``).
        preset: a preset name of ``algo`` (``diffmaxent presets ALGO`` lists them).
        overrides: hyperparameter values applied after the preset (numbers or strings).
        force: replace a run already in ``out`` (its own files only; other files are kept), once
            this run holds the directory's lock and its config is valid.
        progress: True for a progress bar, False for silence, None for a bar on a terminal and
            one line per evaluation otherwise.
        resume: a run or group directory to continue from its newest intact checkpoint (a group:
            the newest step every seed holds), with its own settings (only ``steps`` may change);
            the rows it writes from the checkpoint on are those the uninterrupted run would have
            written.
        wandb: also log every evaluation row to Weights & Biases (the ``[wandb]`` extra;
            ``WANDB_MODE=offline`` writes the run under ``RUN_DIR/wandb`` without a network).
            TensorBoard event files are always written into the run directory.
        seed_batching: with ``seeds``, how the seeds share one compiled call: ``vmap`` (batched
            kernels, for accelerators), ``map`` (one seed after another inside the call, faster
            on CPU) or ``auto`` (``map`` on CPU, ``vmap`` on a GPU or TPU). Resuming a group
            keeps its own.

    Returns:
        The run directory, the final evaluation and all metric rows (with ``seeds``, or resuming
        a group: the group directory and one such result per seed).

    Raises:
        UsageError: for any bad input (nothing is written then), a run directory in use by
            another process, or no intact checkpoint to resume from.
        TrainingInterrupted: SIGINT or SIGTERM arrived; a checkpoint was written at the step.
        TrainingDiverged: a NaN or Inf appeared; the last finite checkpoint is kept (several
            seeds: :class:`SeedsDiverged` once the others have finished).
    """
    if resume is not None:
        if (algo, env, seed, seeds, preset, out, force, seed_batching) != (
            DEFAULT_ALGO,
            DEFAULT_ENV,
            0,
            None,
            DEFAULT_PRESET,
            None,
            False,
            "auto",
        ) or overrides:
            raise UsageError(
                "--resume continues a run with its own settings; only --steps may be given"
            )
        if wandb:
            trackers.require_wandb()
        return _resume(Path(resume), steps, progress, wandb)
    if wandb:
        trackers.require_wandb()
    if seed_batching not in SEED_BATCHING:
        raise UsageError(
            f"seed_batching must be one of {', '.join(SEED_BATCHING)}, got {seed_batching!r}"
        )
    steps = DEFAULT_STEPS if steps is None else steps
    if seeds is not None:
        seed_list = check_seeds(seeds)
        if seed != 0:
            raise UsageError("give seed or seeds, not both")
    config = resolve_config(algo, env, steps=steps, seed=seed, preset=preset, overrides=overrides)
    spec = get_algo(algo)
    if seeds is None:
        run_dir = Path(out) if out is not None else default_run_directory(algo, env, seed)
        runs.check_output_directory(run_dir, force)
        env_spec = _env_spec(config)
        agent = make_agent(config, env_spec)
        with _holding([run_dir]):
            # Checked again under the lock: a run may have finished there since the check above.
            runs.check_output_directory(run_dir, force)
            _start_run(run_dir, config, env_spec)
            setup = RunSetup(config, env_spec, run_dir, progress, wandb=wandb)
            return _run(spec, [setup], agent)[0]

    group_dir = Path(out) if out is not None else default_run_directory(algo, env, seed_list)
    members = [group_dir / runs.seed_run_name(seed) for seed in seed_list]
    for directory in (group_dir, *members):
        runs.check_output_directory(directory, force)
    env_spec = _env_spec(config)
    agent = make_agent(config, env_spec)
    with _holding([group_dir, *members]):
        for directory in (group_dir, *members):
            runs.check_output_directory(directory, force)
        runs.remove_run(group_dir)
        runs.write_group(
            group_dir,
            {
                "algo": algo,
                "env": env,
                "preset": preset,
                "steps": steps,
                "seeds": seed_list,
                "seed_batching": seed_batching,
            },
        )
        stop = StopRequest()
        setups = []
        for seed, member in zip(seed_list, members, strict=True):
            member_config = dataclasses.replace(config, seed=seed)
            _start_run(member, member_config, env_spec)
            setups.append(
                RunSetup(
                    member_config,
                    env_spec,
                    member,
                    progress,
                    False,
                    stop,
                    group_dir,
                    wandb,
                    seed_batching,
                )
            )
        return GroupResult(group_dir, _run(spec, setups, agent))


def _start_run(run_dir: Path, config: ResolvedConfig, env_spec: EnvSpec) -> None:
    """Replace a previous run's files by a new run's config and status (under its lock)."""
    runs.remove_run(run_dir)
    runs.write_json(run_dir / runs.CONFIG_FILE, config.to_json(env_spec))
    runs.write_status(run_dir, "running", 0)


@contextlib.contextmanager
def _holding(directories: Sequence[Path]) -> Iterator[None]:
    """Create the directories and hold their locks; if one is in use, release the others and
    remove the ones created here (still empty but for their lock file)."""
    created = [directory for directory in directories if not directory.exists()]
    locks = []
    try:
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
            locks.append(runs.RunLock(directory).acquire())
    except UsageError:
        for lock in locks:
            lock.release()
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                (directory / runs.LOCK_FILE).unlink(missing_ok=True)
                directory.rmdir()
        raise
    try:
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


def _env_spec(config: ResolvedConfig) -> EnvSpec:
    probe = config.make_env(config.seed)
    try:
        return probe.env_spec
    finally:
        probe.close()


def _resume(
    run_dir: Path, steps: int | None, progress: bool | None, wandb: bool
) -> TrainResult | GroupResult:
    if run_dir.is_dir() and runs.holds_group(run_dir):
        return _resume_group(run_dir, steps, progress, wandb)
    if not run_dir.is_dir() or not runs.holds_run(run_dir):
        raise UsageError(f"cannot resume {str(run_dir)!r}: it is not a run directory")
    with _holding([run_dir]):
        config, env_spec = _resumed_config(run_dir, steps)
        spec = get_algo(config.algo)
        agent = make_agent(config, env_spec)
        setup = RunSetup(config, env_spec, run_dir, progress, resume=True, wandb=wandb)
        return _run(spec, [setup], agent)[0]


def _resume_group(
    group_dir: Path, steps: int | None, progress: bool | None, wandb: bool
) -> GroupResult:
    """Resume every seed of a group from the newest step all of them hold, to ``steps`` (default:
    the largest total among them, should one seed have been continued alone)."""
    members = runs.group_runs(group_dir)
    seed_batching = runs.read_json(group_dir / runs.GROUP_FILE).get("seed_batching", "auto")
    if seed_batching not in SEED_BATCHING:
        raise runs.DamagedFileError(
            f"{group_dir / runs.GROUP_FILE} names an unknown seed_batching {seed_batching!r}"
        )
    for member in members:
        if not member.is_dir() or not runs.holds_run(member):
            raise UsageError(f"cannot resume group {str(group_dir)!r}: {member.name} is not a run")
    with _holding([group_dir, *members]):
        recorded = [run_config(member) for member in members]
        first_config, env_spec = recorded[0]

        def settings(config: ResolvedConfig, spec: EnvSpec) -> dict[str, Any]:
            return {**config.to_json(spec), "seed": None, "steps": None}

        for member, (config, member_spec) in zip(members, recorded, strict=True):
            if settings(config, member_spec) != settings(first_config, env_spec):
                raise UsageError(
                    f"cannot resume group {str(group_dir)!r}: {member.name} has other settings "
                    f"than {members[0].name}"
                )
        done = [config.steps for config, _ in recorded]
        total = _check_int("steps", steps, 1) if steps is not None else max(done)
        if total <= min(done) and all(runs.is_complete(member) for member in members):
            raise UsageError(
                f"group {str(group_dir)!r} is complete ({min(done)} steps); pass --steps with a "
                "larger total to train it longer"
            )
        spec = get_algo(first_config.algo)
        agent = make_agent(first_config, env_spec)
        stop = StopRequest()
        setups = [
            RunSetup(
                dataclasses.replace(config, steps=total),
                env_spec,
                member,
                progress,
                True,
                stop,
                group_dir,
                wandb,
                seed_batching,
            )
            for member, (config, _) in zip(members, recorded, strict=True)
        ]
        return GroupResult(group_dir, _run(spec, setups, agent))


def _resumed_config(run_dir: Path, steps: int | None) -> tuple[ResolvedConfig, EnvSpec]:
    """The run's config with ``steps`` as its new total; refuses a complete run that would not
    train longer."""
    config, env_spec = run_config(run_dir)
    done = config.steps
    if steps is not None:
        config = dataclasses.replace(config, steps=_check_int("steps", steps, 1))
    if runs.is_complete(run_dir) and config.steps <= done:
        raise UsageError(
            f"run {str(run_dir)!r} is complete ({done} steps); pass --steps with a larger "
            "total to train it longer"
        )
    return config, env_spec


def _run(spec: AlgoSpec, setups: Sequence[RunSetup], agent: Any) -> list[TrainResult]:
    """The loop, with SIGINT / SIGTERM turned into a checkpoint and a clean stop, and the runs'
    status recorded however they end."""
    try:
        with stop_on_signals(setups[0].stop):
            return loop_for(spec, setups[0].config.env).run(setups, agent)
    except (TrainingStopped, UsageError):
        raise  # the recorders wrote the status, or nothing was changed
    except KeyboardInterrupt:
        for setup in setups:
            _record_status(setup.run_dir, "interrupted", "a second signal stopped it at once")
        raise
    except BaseException as error:
        for setup in setups:
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
        UsageError: not a run directory (a group of seeds included: name one of its runs), or
            no intact config anywhere.
    """
    if runs.holds_group(run_dir) and not (run_dir / runs.CONFIG_FILE).exists():
        members = ", ".join(sorted(p.name for p in Path(run_dir).glob("seed*") if p.is_dir()))
        raise UsageError(
            f"{str(run_dir)!r} is a group of seeds trained together; name one of its run "
            f"directories ({members})"
        )
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
    agent = make_agent(config, env_spec)
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

"""Evaluation videos: episodes rendered offscreen (EGL or OSMesa, no display or GPU needed) and
written to an mp4 with imageio's bundled ffmpeg."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from diffmaxent.errors import UsageError
from diffmaxent.loops.bookkeeping import EVAL_SEED_OFFSET, evaluate

DEFAULT_FPS = 30


def free_path(path: Path) -> Path:
    """``path`` if nothing is there, else the first ``stem-1.mp4``, ``stem-2.mp4``, ... that is
    free: an existing video is never overwritten."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def frames_per_second(env: Any, action_repeat: int) -> float:
    """The env's own ``render_fps`` (real time for Gymnasium MuJoCo and DMC), else 30; divided by
    the action repeat, since one frame is drawn per action."""
    fps = (getattr(env.unwrapped, "metadata", None) or {}).get("render_fps")
    return float(fps or DEFAULT_FPS) / action_repeat


def record_video(
    loaded: Any,
    path: Path,
    episodes: int,
    seed: int,
    deterministic: bool,
) -> tuple[Path, np.ndarray, int]:
    """Render ``episodes`` evaluation episodes of a loaded run into one mp4 at ``path`` (or the
    next free name beside it).

    Returns:
        The mp4's path, the episode returns ``[episodes]`` and the number of frames written.

    Raises:
        UsageError: the env cannot render frames offscreen, or the writer is missing.
    """
    import imageio.v2 as imageio

    try:
        env = loaded.config.make_env(seed + EVAL_SEED_OFFSET, render_mode="rgb_array")
    except UsageError:
        raise
    except Exception as error:  # a suite's own error when it cannot make a renderable env
        raise UsageError(f"cannot render {loaded.config.env}: {_reason(error)}") from None
    try:
        env.reset()
        try:
            frame = env.render()
        except Exception as error:  # missing GL library, pygame for classic control, ...
            reason = _reason(error)
            gl_hint = (
                " (MuJoCo needs EGL or OSMesa: see the README's set-up; MUJOCO_GL selects one)"
                if any(word in reason for word in ("GL", "gl", "display", "DISPLAY"))
                else ""
            )
            raise UsageError(
                f"cannot render {loaded.config.env} offscreen: {reason}{gl_hint}"
            ) from None
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise UsageError(f"{loaded.config.env} does not render RGB frames")
        path = free_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            writer = imageio.get_writer(
                str(path),
                fps=frames_per_second(env, loaded.config.loop.action_repeat),
                codec="libx264",
                macro_block_size=1,
            )
        except Exception as error:
            raise UsageError(
                f"cannot write mp4: {_reason(error)} (pip install imageio-ffmpeg)"
            ) from None
        written = 0

        def write(frame: np.ndarray) -> None:
            nonlocal written
            writer.append_data(np.asarray(frame, np.uint8))
            written += 1

        try:
            with warnings.catch_warnings():
                # imageio starts ffmpeg (fork + exec) at the first frame, which JAX warns about; the
                # child runs no JAX code, so the warning does not apply.
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
                evaluation = evaluate(
                    loaded.agent,
                    loaded.state,
                    env,
                    episodes,
                    jax.random.PRNGKey(seed),
                    deterministic,
                    on_frame=write,
                )
        finally:
            writer.close()
    finally:
        env.close()
    return path, evaluation.returns, written


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

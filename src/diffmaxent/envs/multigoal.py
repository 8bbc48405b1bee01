"""The 2-D multi-goal point mass of Haarnoja et al. (2017), "Reinforcement Learning with Deep
Energy-Based Policies", used in the MaxEntDP paper's Fig. 1.

Constants are those of the original environment (softqlearning's ``MultiGoalEnv``):

* state: position in the box [-7, 7]^2, starting at N(0, 0.1^2 I) (clipped to the box);
* action: velocity in [-1, 1]^2; the next position is ``clip(position + action)`` (no dynamics
  noise);
* reward: ``-(30 * |action|^2 + 1 * min_g |position - g|^2)``, plus a bonus of 10 when the new
  position is within 1.0 of a goal;
* goals: (5, 0), (-5, 0), (0, 5), (0, -5);
* an episode terminates on reaching a goal and is truncated after 30 steps (the original's
  ``max_path_length``).

``render_mode="rgb_array"`` draws the point and its path over the cost landscape (goals in red),
in numpy, for ``diffmaxent eval --video``.

The maximum-entropy optimal policy picks one of the four goals at random and heads for it, which
makes the environment a direct test of whether a policy keeps several behaviour modes.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

GOAL_POSITIONS = np.array([(5.0, 0.0), (-5.0, 0.0), (0.0, 5.0), (0.0, -5.0)], dtype=np.float32)
GOAL_THRESHOLD = 1.0
GOAL_REWARD = 10.0
ACTUATION_COST = 30.0
DISTANCE_COST = 1.0
INIT_SIGMA = 0.1
POSITION_LIMIT = 7.0
MAX_EPISODE_STEPS = 30
RENDER_SIZE = 320  # pixels per side of a rendered frame


def distance_cost(position: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest goal; position ``[..., 2]`` -> ``[...]``."""
    diff = np.asarray(position)[..., None, :] - GOAL_POSITIONS
    return np.min(np.sum(diff**2, axis=-1), axis=-1)


def nearest_goal(position: np.ndarray) -> tuple[int, float]:
    """Index of the nearest goal and the Euclidean distance to it."""
    distances = np.linalg.norm(GOAL_POSITIONS - np.asarray(position, dtype=np.float32), axis=-1)
    index = int(np.argmin(distances))
    return index, float(distances[index])


PIXELS_PER_UNIT = (RENDER_SIZE - 1) / (2 * POSITION_LIMIT)


def cost_grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x, y, cost``, each ``[size, size]``: the distance cost on a regular grid over the box,
    ``y`` increasing with the row index."""
    grid = np.linspace(-POSITION_LIMIT, POSITION_LIMIT, size)
    x, y = np.meshgrid(grid, grid)
    return x, y, DISTANCE_COST * distance_cost(np.stack([x, y], axis=-1))


def _pixel(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of positions ``[..., 2]`` in a frame; +y is up."""
    position = np.asarray(position, dtype=np.float64)
    return (
        np.rint((POSITION_LIMIT - position[..., 1]) * PIXELS_PER_UNIT).astype(int),
        np.rint((position[..., 0] + POSITION_LIMIT) * PIXELS_PER_UNIT).astype(int),
    )


def _paint_discs(image: np.ndarray, centers: np.ndarray, radius: float, color) -> None:
    rows, cols = np.mgrid[0:RENDER_SIZE, 0:RENDER_SIZE]
    for row, col in zip(*_pixel(centers), strict=True):
        image[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = color


def landscape_image() -> np.ndarray:
    """``[RENDER_SIZE, RENDER_SIZE, 3]`` uint8: the distance cost (viridis) with the goals'
    termination discs in red."""
    from matplotlib import colormaps

    cost = cost_grid(RENDER_SIZE)[2][::-1]  # row 0 is the top of the frame (+y)
    image = (colormaps["viridis"](cost / cost.max())[..., :3] * 200).astype(np.uint8)
    _paint_discs(image, GOAL_POSITIONS, GOAL_THRESHOLD * PIXELS_PER_UNIT, (220, 30, 30))
    return image


class MultiGoalEnv(gym.Env):
    """2-D point mass with four goals; ``info["goal"]`` is the reached goal's index or -1."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"MultiGoal-v0 renders rgb_array frames only, not {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(
            -POSITION_LIMIT, POSITION_LIMIT, shape=(2,), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2, dtype=np.float32)
        self._path: list[np.ndarray] = []
        self._background: np.ndarray | None = None

    def render(self) -> np.ndarray | None:
        """The landscape with this episode's path (white) and the point (orange)."""
        if self.render_mode != "rgb_array":
            return None
        if self._background is None:
            self._background = landscape_image()
        frame = self._background.copy()
        path = np.asarray(self._path or [self._position])
        # Dense samples along each segment draw the path as a line.
        fractions = np.linspace(0.0, 1.0, 24)[:, None]
        for start, end in itertools.pairwise(path):
            rows, cols = _pixel(start + fractions * (end - start))
            frame[rows.clip(0, RENDER_SIZE - 1), cols.clip(0, RENDER_SIZE - 1)] = 255
        _paint_discs(frame, self._position[None], 5.0, (255, 150, 0))
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        start = INIT_SIGMA * self.np_random.normal(size=2)
        self._position = np.clip(start, -POSITION_LIMIT, POSITION_LIMIT).astype(np.float32)
        self._path = [self._position.copy()]
        return self._position.copy(), {"goal": -1}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        position = np.clip(self._position + action, -POSITION_LIMIT, POSITION_LIMIT)
        self._position = position.astype(np.float32)
        if self.render_mode is not None:  # the path is only drawn, so only kept when rendering
            self._path.append(self._position.copy())
        reward = -(
            ACTUATION_COST * float(np.sum(action**2))
            + DISTANCE_COST * float(distance_cost(self._position))
        )
        goal, distance = nearest_goal(self._position)
        terminated = distance < GOAL_THRESHOLD
        if terminated:
            reward += GOAL_REWARD
        return (
            self._position.copy(),
            reward,
            terminated,
            False,
            {"goal": goal if terminated else -1},
        )


def goal_statistics(last_infos: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mode coverage of a set of evaluation episodes, from each episode's last ``info``.

    Returns ``goals_reached`` (distinct goals), ``goal_episodes`` (episodes that reached any goal),
    ``max_goal_share`` (the largest fraction of those taken by one goal; None, "not measured", when
    no episode reached a goal) and
    ``goal_<i>`` counts.
    """
    goals = [int(info.get("goal", -1)) for info in last_infos]
    counts = [goals.count(i) for i in range(len(GOAL_POSITIONS))]
    reached = sum(counts)
    stats: dict[str, float | None] = {
        "goals_reached": float(sum(c > 0 for c in counts)),
        "goal_episodes": float(reached),
        "max_goal_share": max(counts) / reached if reached else None,
    }
    stats.update({f"goal_{i}": float(c) for i, c in enumerate(counts)})
    return stats


def goal_counts(trajectories: list[np.ndarray]) -> list[int]:
    """Episodes ending at each goal (the env's rule: within ``GOAL_THRESHOLD`` of it), from
    position trajectories (each ``[steps + 1, 2]``)."""
    counts = [0] * len(GOAL_POSITIONS)
    for trajectory in trajectories:
        goal, distance = nearest_goal(np.asarray(trajectory[-1], np.float32))
        if distance < GOAL_THRESHOLD:
            counts[goal] += 1
    return counts


def plot_trajectories(trajectories: list[np.ndarray], path: str, title: str) -> None:
    """Draw position trajectories (each ``[steps + 1, 2]``) over the cost landscape, like Fig. 1
    of the MaxEntDP paper: contours of the squared distance to the nearest goal, the goals in
    red with the number of episodes that ended at each in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, cost = cost_grid(281)
    fig, ax = plt.subplots(figsize=(5, 5.4), dpi=100)
    contours = ax.contour(x, y, cost, levels=15, cmap="viridis", linewidths=0.8)
    ax.clabel(contours, inline=True, fontsize=7, fmt="%.0f")
    for trajectory in trajectories:
        ax.plot(trajectory[:, 0], trajectory[:, 1], color="C0", alpha=0.6, linewidth=1.0)
    markers = ["o", "s", "^", "v"]
    for index, (goal, count) in enumerate(
        zip(GOAL_POSITIONS, goal_counts(trajectories), strict=True)
    ):
        ax.plot(
            goal[0],
            goal[1],
            markers[index],
            color="red",
            markersize=8,
            label=f"goal ({goal[0]:g}, {goal[1]:g}): {count} of {len(trajectories)}",
        )
    ax.set_xlim(-POSITION_LIMIT, POSITION_LIMIT)
    ax.set_ylim(-POSITION_LIMIT, POSITION_LIMIT)
    ax.set_aspect("equal")
    ax.set_xlabel("x position")
    ax.set_ylabel("y position")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7, title="episodes ending at", title_fontsize=7)
    fig.text(
        0.5,
        0.01,
        "contours: squared distance to the nearest goal (the reward's position cost)",
        ha="center",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


if "MultiGoal-v0" not in gym.registry:
    gym.register(
        id="MultiGoal-v0",
        entry_point="diffmaxent.envs.multigoal:MultiGoalEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )

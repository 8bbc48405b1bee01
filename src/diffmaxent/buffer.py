"""Replay buffer: preallocated host arrays with ring overwrite."""

from __future__ import annotations

import numpy as np

from diffmaxent.types import Batch


class ReplayBuffer:
    """A fixed-capacity FIFO of transitions kept in numpy arrays on the host.

    Once full, each new transition overwrites the oldest. :meth:`sample` draws many batches at once
    (shape ``[num_batches, batch_size, ...]``) so that one device transfer feeds several gradient
    steps.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros((capacity,), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.terminated = np.zeros((capacity,), dtype=np.float32)
        self.truncated = np.zeros((capacity,), dtype=np.float32)
        self._next = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
    ) -> None:
        i = self._next
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.terminated[i] = float(terminated)
        self.truncated[i] = float(truncated)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int, num_batches: int = 1) -> Batch:
        """Uniformly sample ``num_batches`` batches (with replacement across the buffer).

        Returns:
            A :class:`Batch` of numpy arrays with leading shape ``[num_batches, batch_size]``.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        index = rng.integers(0, self.size, size=(num_batches, batch_size))
        return Batch(
            obs=self.obs[index],
            action=self.action[index],
            reward=self.reward[index],
            next_obs=self.next_obs[index],
            terminated=self.terminated[index],
            truncated=self.truncated[index],
        )


def zeros_batch(obs_dim: int, action_dim: int, batch_size: int, num_batches: int = 1) -> Batch:
    """A batch of zeros with the shapes :meth:`ReplayBuffer.sample` returns (for tracing)."""
    lead = (num_batches, batch_size)
    return Batch(
        obs=np.zeros((*lead, obs_dim), np.float32),
        action=np.zeros((*lead, action_dim), np.float32),
        reward=np.zeros(lead, np.float32),
        next_obs=np.zeros((*lead, obs_dim), np.float32),
        terminated=np.zeros(lead, np.float32),
        truncated=np.zeros(lead, np.float32),
    )

"""A deterministic, resumable, rank-aware sampler: the stream of training samples depends only on the seed,
so a run restarted at step ``s`` sees exactly what it would have seen, and ranks split each global batch."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(index, draw)`` pairs forever: epoch ``e`` is a permutation seeded by ``(seed, e)``; ``draw`` is
    the position in the global stream (it seeds per-sample randomness). Rank ``r`` of ``world`` takes every
    ``world``-th item, starting from global position ``start``."""

    def __init__(self, num_samples: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError(f"the dataset is empty (num_samples={num_samples})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples = num_samples
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        while True:
            epoch, offset = divmod(position, self.num_samples)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            while offset < self.num_samples:
                yield int(order[offset]), position
                offset += self.world_size
                position += self.world_size

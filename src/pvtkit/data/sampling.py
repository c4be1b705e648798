"""Which images each process takes, step by step: deterministic, resumable, the same whatever the process count."""

from __future__ import annotations

import numpy as np


class TrainBatchSampler:
    """This process's micro-batches of `(index, epoch)` keys, for one epoch from `start_step` on.

    Step s of an epoch takes images `perm[s*B:(s+1)*B]` of the epoch's permutation (an incomplete last batch is
    dropped); process r of N takes every N-th of them from r, and splits its share into `accum` micro-batches.
    """

    def __init__(self, num_images: int, batch_size: int, rank: int, world_size: int, accum: int, seed: int) -> None:
        self.n, self.batch, self.rank, self.world, self.accum, self.seed = (
            num_images,
            batch_size,
            rank,
            world_size,
            accum,
            seed,
        )
        self.micro = batch_size // (world_size * accum)
        self.steps = num_images // batch_size
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for s in range(self.start_step, self.steps):
            mine = perm[s * self.batch : (s + 1) * self.batch][self.rank :: self.world]
            for a in range(self.accum):
                yield [(int(i), self.epoch) for i in mine[a * self.micro : (a + 1) * self.micro]]

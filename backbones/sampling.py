"""Which samples each batch holds: a seeded permutation per epoch, shared out over processes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index): the epoch's order (index -1) or a batch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for one sample's augmentation; distinct for every (seed, epoch, index)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class EpochPlan:
    """Which dataset indices each batch of an epoch holds, for one process.

    The epoch's order is a permutation seeded by (seed, epoch), as in ArrayBatches; each of
    ``world_size`` processes takes its contiguous share of every global batch. Iterating yields,
    for batches ``start`` … end of ``epoch``, lists of (epoch, index) keys (the DataLoader's
    batch sampler).
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int) -> None:  # fmt: skip
        self.num_samples, self.batch_size, self.shuffle, self.drop_last = num_samples, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def order(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=batch_generator(self.seed, epoch, -1))
        return torch.arange(self.num_samples)

    def share(self, order: torch.Tensor, batch: int) -> list[int]:
        local = self.batch_size // self.world_size
        first = batch * self.batch_size + self.rank * local
        last = min(first + local, (batch + 1) * self.batch_size)
        return order[first:last].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.keys(self.epoch, self.start)

    def keys(self, epoch: int, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        order = self.order(epoch)
        for batch in range(start, len(self)):
            yield [(epoch, index) for index in self.share(order, batch)]

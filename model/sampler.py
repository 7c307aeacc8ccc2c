"""The identity-modality sampler (DESIGN.md section 4): each batch holds P identities x (K visible + K
infrared) images, so every identity has cross-modality positives for the triplet and compensation losses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from .data.records import INFRARED, VISIBLE, Record


class IdentityModalitySampler:
    """Batch sampler over a record list; yields lists of indices, P * 2K per batch.

    Epoch length follows the larger modality: ceil(max(n_visible, n_infrared) / (P * K)) batches. The P
    identities of a batch are always distinct.
    The stream is a pure function of (seed, epoch), so resuming at an epoch reproduces its batches.
    """

    def __init__(self, records: Sequence[Record], num_ids: int = 8, num_per_modality: int = 4, seed: int = 0) -> None:
        self.p, self.k, self.seed = num_ids, num_per_modality, seed
        self.epoch = 0
        index: dict[int, dict[int, list[int]]] = defaultdict(lambda: {VISIBLE: [], INFRARED: []})
        for i, r in enumerate(records):
            index[r.pid][r.modality].append(i)
        self.pids = sorted(pid for pid, m in index.items() if m[VISIBLE] and m[INFRARED])
        if len(self.pids) < 2:
            raise ValueError(
                f"the identity-modality sampler needs at least 2 identities with both visible and infrared "
                f"images; found {len(self.pids)}"
            )
        self.index = {pid: index[pid] for pid in self.pids}
        n_vis = sum(len(m[VISIBLE]) for m in self.index.values())
        n_ir = sum(len(m[INFRARED]) for m in self.index.values())
        self.p = min(self.p, len(self.pids))
        self.num_batches = max(1, -(-max(n_vis, n_ir) // (self.p * self.k)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order: list[int] = []
        for _ in range(self.num_batches):
            chosen = self._take_distinct(order, rng)
            batch: list[int] = []
            for pid in chosen:
                for modality in (VISIBLE, INFRARED):
                    pool = self.index[pid][modality]
                    batch.extend(rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist())
            yield batch

    def _take_distinct(self, order: list[int], rng: np.random.Generator) -> list[int]:
        """P distinct identities from the front of `order` (shuffled passes over the identities, refilled
        in place). Where one pass ends and the next begins, an identity already in the batch is deferred
        to the front of the queue instead of repeating: a batch never holds one identity twice."""
        chosen: list[int] = []
        deferred: list[int] = []
        while len(chosen) < self.p:
            if not order:
                order.extend(rng.permutation(self.pids).tolist())
            pid = order.pop(0)
            (deferred if pid in chosen else chosen).append(pid)
        order[:0] = deferred
        return chosen

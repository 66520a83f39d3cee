"""Batches of frames for the trainer, gathered by worker processes ahead of the step.

The caller's process plans every batch (``FrameStore.plan``: which frames of which
videos, the random draws in one sequence, so results do not depend on the number of
workers); workers only copy the planned frames out of the memory-mapped store, in the
stored type (uint8 stays uint8: a quarter of the bytes to move), into pinned memory
when the model runs on a GPU, ``prefetch`` batches per worker ahead of the step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from recsys.frames import FramePlan, FrameStore

K = TypeVar("K")


@dataclass(frozen=True)
class LoaderConfig:
    #: gathering processes; -1 = one per spare core with a GPU, none on a CPU (there
    #: the model's compute owns every core: on 2 cores one worker measured 0.84 of the
    #: in-memory step rate, gathering in the training process 0.95), 0 = none
    workers: int = -1
    #: batches each worker gathers ahead
    prefetch: int = 2

    def __post_init__(self) -> None:
        if self.workers < -1 or self.prefetch < 1:
            raise ValueError("workers must be >= -1 and prefetch >= 1")

    def resolve_workers(self, device: torch.device) -> int:
        if self.workers >= 0:
            return self.workers
        if device.type == "cuda":
            return max(1, min(8, (os.cpu_count() or 2) - 1))
        return 0


class _Gather(Dataset[Any]):
    """``dataset[(key, plan)]`` -> (key, frames (B, T, D) stored type, mask (B, T))."""

    def __init__(self, store: FrameStore) -> None:
        self.store = store

    def __getitem__(self, item: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        key, plan = item
        frames, mask = self.store.gather(plan)
        return key, torch.from_numpy(frames), torch.from_numpy(mask)

    def __len__(self) -> int:  # never asked: the plans come from an iterable
        raise TypeError("a stream of plans has no length")


def _as_is(item: Any) -> Any:
    return item


def load_batches(
    store: FrameStore,
    plans: Iterable[tuple[K, FramePlan]],
    device: torch.device,
    cfg: LoaderConfig | None = None,
) -> Iterator[tuple[K, torch.Tensor, torch.Tensor]]:
    """(key, stored-type frames, mask) for each ``(key, plan)``, in order; the key is
    whatever the caller needs back with the batch (its triplet rows, say)."""
    cfg = cfg or LoaderConfig()
    workers = cfg.resolve_workers(device)
    if workers == 0:
        gather = _Gather(store)
        for item in plans:
            yield gather[item]
        return
    loader = DataLoader(
        _Gather(store),
        batch_size=None,
        sampler=plans,  # type: ignore[arg-type]  # any iterable of indices will do
        num_workers=workers,
        prefetch_factor=cfg.prefetch,
        collate_fn=_as_is,  # keys stay as they are; frames are tensors already
        pin_memory=device.type == "cuda",
        multiprocessing_context="fork" if os.name == "posix" else None,
    )
    yield from loader

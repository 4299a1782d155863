"""A batch loader over a streaming dataset with rank sharding, shuffling and exact resume.

How it works (and why it is exact):

* **One global order.** Every rank iterates the *whole* stream in the same order. With
  ``shuffle_buffer_size = B > 0`` the stream is cut into consecutive chunks of B examples and each chunk is
  permuted with a generator seeded by ``(seed, epoch, chunk index)``: a local shuffle that is a pure
  function of the position, so nothing random has to be saved. (A ``datasets`` shuffle buffer cannot be
  restored, see DESIGN.md; this one never needs to be.) It holds B examples in memory: 10,000 blocks
  of 1,024 tokens are ~400 MB of Python ints, so size it to the examples.
* **Sharding exactly once.** The shuffled stream is grouped into global batches of
  ``batch_size * world_size`` examples; rank ``r`` takes the examples with index ``r, r + world_size, ...``
  of each global batch. Every example goes to exactly one rank. Do not also use ``split_dataset_by_node``
  or ``accelerator.prepare`` on this loader: that would shard twice.
* **Same number of batches on every rank.** An incomplete last global batch is dropped
  (``drop_last=True``), so every rank yields ``floor(n / (batch_size * world_size))`` batches and DDP never
  waits on a rank that ran out. With ``drop_last=False`` the tail is split round-robin too, and kept only
  if every rank gets at least one example.
* **Resume.** The state is the epoch and the number of stream examples consumed by the batches already
  handed out (plus the settings that define the order). Resuming replays the stream up to the current
  shuffle chunk (re-reading, and re-tokenizing for packed streams, the consumed part of the epoch), re-
  permutes that chunk identically and continues: the batches are exactly those of the uninterrupted run.
  The position counts *global* examples, so a run may even resume with a different ``world_size``.

``num_workers > 0`` builds batches in a background thread (tokenizers release the GIL), ``num_workers``
batches ahead; the state still describes the batches handed out, not the ones prefetched.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from hfssl.errors import ConfigError

_STATE_VERSION = 1
_STOP = object()


class StatefulLoader:
    """Iterate CPU batches of a (streaming) dataset; see the module docstring for the guarantees."""

    def __init__(
        self,
        dataset: Iterable[dict],
        *,
        batch_size: int,
        collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer_size: int = 0,
        num_workers: int = 0,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        if shuffle_buffer_size < 0 or num_workers < 0:
            raise ConfigError("shuffle_buffer_size and num_workers must be >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.epoch = 0
        # Examples of the (shuffled) global stream consumed by the batches handed out in this epoch.
        self.position = 0
        self.batches_in_epoch = 0

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its own shuffle order). Setting the current epoch again keeps the position,
        so a resumed run may call ``set_epoch`` with the epoch it resumed into."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.position = 0
            self.batches_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot: resuming from it continues with the next batch."""
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "batches_in_epoch": self.batches_in_epoch,
            "seed": self.seed,
            "shuffle_buffer_size": self.shuffle_buffer_size,
            "global_batch_size": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ConfigError(f"unsupported data loader state version {state.get('version')!r}")
        for key in ("seed", "shuffle_buffer_size"):
            if state[key] != getattr(self, key):
                raise ConfigError(
                    f"cannot resume the data stream: it was saved with {key}={state[key]} but this run uses "
                    f"{getattr(self, key)}; use the same value to continue the same order"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.batches_in_epoch = int(state.get("batches_in_epoch", 0))

    # ------------------------------------------------------------------ iteration
    def _ordered_stream(self, start: int) -> Iterator[dict]:
        """The epoch's (chunk-shuffled) example stream from global index ``start``."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # only matters if the user added their own datasets shuffle
        it = iter(self.dataset)
        B = self.shuffle_buffer_size
        if B <= 1:
            for _ in range(start):
                if next(it, _STOP) is _STOP:
                    return
            yield from it
            return
        first_chunk, offset = divmod(start, B)
        for _ in range(first_chunk * B):  # replay: chunks before the current one are skipped unread
            if next(it, _STOP) is _STOP:
                return
        chunk_index = first_chunk
        while True:
            chunk = [ex for _, ex in zip(range(B), it)]
            if not chunk:
                return
            rng = np.random.default_rng([self.seed, self.epoch, chunk_index])
            order = rng.permutation(len(chunk))
            for i in order[offset:]:
                yield chunk[i]
            offset = 0
            chunk_index += 1
            if len(chunk) < B:
                return

    def _batches(self) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        """(batch for this rank, global position after it) pairs from the current position."""
        G = self.batch_size * self.world_size
        position = self.position
        stream = self._ordered_stream(position)
        while True:
            group = [ex for _, ex in zip(range(G), stream)]
            if not group:
                return
            if len(group) < G:
                mine = group[self.rank :: self.world_size]
                # Keep a short tail only if every rank gets some of it (equal batch counts).
                if self.drop_last or len(group) < self.world_size:
                    return
                yield self.collate_fn(mine), position + len(group)
                return
            position += G
            yield self.collate_fn(group[self.rank :: self.world_size]), position

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        source = self._batches() if self.num_workers == 0 else self._prefetched()
        for batch, position in source:
            self.position = position
            self.batches_in_epoch += 1
            yield batch
        # A finished pass starts over (same order) if iterated again without set_epoch.
        self.position = 0
        self.batches_in_epoch = 0

    def _prefetched(self) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        q: queue.Queue = queue.Queue(maxsize=max(1, self.num_workers))
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self._batches():
                    if not put(item):
                        return
                put(_STOP)
            except BaseException as exc:  # re-raised in the consumer, with its traceback
                put(exc)

        thread = threading.Thread(target=produce, name="hfssl-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _STOP:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=10)

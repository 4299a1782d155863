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
  handed out (plus the settings that define the order). Resuming restarts the stream at the current
  shuffle chunk (or, without shuffling, at the current position), re-permutes that chunk identically and
  continues: the batches are exactly those of the uninterrupted run. The position counts *global*
  examples, so a run may even resume with a different ``world_size``.
* **Resume cost.** A dataset with an ``iter_with_cursors(cursor=None)`` method (``pack_clm``,
  ``pack_mlm_segments`` and ``nsp_pairs`` have one) yields ``(example, cursor)`` pairs, where the JSON-able
  cursor restarts the stream right after that example. The state keeps the cursor of the current chunk's
  start, so a resume tokenizes at most about one shuffle chunk again (the documents before it are only
  read; ``nsp_pairs`` also re-tokenizes the first sentences of the <= 256 documents in its pool for random
  B segments, and its cursor carries its RNG state, ~7 kB). Any other dataset (a ``.map()`` or ``.take()``
  of a packed stream; user datasets) is *replayed* from the epoch start up to the current chunk: still
  exact, but a packed stream re-tokenizes everything consumed in the epoch. Checkpoints written without a
  cursor are replayed too.

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


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else "..." + text[3 - limit:]  # the end of a path says most


def _difference(saved: Any, current: Any) -> str:
    """``saved -> current``, narrowed to the first differing item of two lists (e.g. one file of many)."""
    if isinstance(saved, list) and isinstance(current, list):
        for i, (a, b) in enumerate(zip(saved, current)):
            if a != b:
                return f"item {i}: {_short(a)} -> {_short(b)}"
        return f"{len(saved)} items -> {len(current)}"
    return f"{_short(saved)} -> {_short(current)}"


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
        fingerprint: dict[str, Any] | None = None,
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
        # What the stream is made of (files, tokenizer, lengths...): a resume from another stream is refused,
        # since a saved position or cursor means nothing there.
        self.fingerprint = fingerprint
        self.epoch = 0
        # Examples of the (shuffled) global stream consumed by the batches handed out in this epoch.
        self.position = 0
        self.batches_in_epoch = 0
        # Where a resume restarts the stream: {"index": global example index, "cursor": dataset cursor}, or
        # None to replay from the epoch start (datasets without cursors, or still inside the first chunk).
        self.resume_point: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its own shuffle order). Setting the current epoch again keeps the position,
        so a resumed run may call ``set_epoch`` with the epoch it resumed into."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.position = 0
            self.batches_in_epoch = 0
            self.resume_point = None

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
            "resume_point": self.resume_point,
            "fingerprint": self.fingerprint,
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
        saved = state.get("fingerprint")
        if saved is not None and self.fingerprint is not None and saved != self.fingerprint:
            changed = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            details = "; ".join(f"{k} {_difference(saved.get(k), self.fingerprint.get(k))}" for k in changed)
            raise ConfigError(
                f"cannot resume the data stream: the checkpoint was taken on other data ({details}); resume with "
                "the same data, tokenizer and lengths, or start afresh with --overwrite_output_dir"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.batches_in_epoch = int(state.get("batches_in_epoch", 0))
        # Absent in checkpoints written before cursors existed: those replay (exact, slower).
        self.resume_point = state.get("resume_point")

    # ------------------------------------------------------------------ iteration
    def _source(self, start: int) -> tuple[int, Iterator[tuple[dict, Any]]]:
        """The epoch's unshuffled stream as ``(example, cursor after it)`` pairs (cursor ``None`` when the
        dataset has none), and the global index of its first example: at most ``start``."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # only matters if the user added their own datasets shuffle
        iter_with_cursors = getattr(self.dataset, "iter_with_cursors", None)
        if iter_with_cursors is None:
            return 0, ((ex, None) for ex in self.dataset)
        point = self.resume_point
        if point is not None and point["index"] <= start:
            return int(point["index"]), iter_with_cursors(point["cursor"])
        return 0, iter_with_cursors(None)

    def _ordered_stream(self, start: int) -> Iterator[tuple[dict, dict | None]]:
        """The epoch's (chunk-shuffled) example stream from global index ``start``, each example with the
        resume point for the position right after it (see ``resume_point``)."""
        B = self.shuffle_buffer_size
        first_chunk, offset = divmod(start, B) if B > 1 else (start, 0)
        index, it = self._source(first_chunk * max(B, 1))
        point = self.resume_point if index > 0 else None
        for _ in range(first_chunk * max(B, 1) - index):  # replay: examples before the restart are skipped
            item = next(it, _STOP)
            if item is _STOP:
                return
            index += 1
            point = _point(index, item[1])
        if B <= 1:
            for example, cursor in it:
                index += 1
                yield example, _point(index, cursor)
            return
        chunk_index = first_chunk
        while True:
            chunk = [item for _, item in zip(range(B), it)]
            if not chunk:
                return
            rng = np.random.default_rng([self.seed, self.epoch, chunk_index])
            order = rng.permutation(len(chunk))
            # Inside a chunk a resume restarts at the chunk; after its last example, at the next one.
            end_point = _point(index + B, chunk[-1][1]) if len(chunk) == B else point
            for k in range(offset, len(chunk)):
                yield chunk[order[k]][0], end_point if k == len(chunk) - 1 else point
            offset = 0
            chunk_index += 1
            index += B
            point = end_point
            if len(chunk) < B:
                return

    def _batches(self) -> Iterator[tuple[dict[str, torch.Tensor], int, dict | None]]:
        """(batch for this rank, global position after it, resume point there) from the current position."""
        G = self.batch_size * self.world_size
        position = self.position
        stream = self._ordered_stream(position)
        while True:
            group = [item for _, item in zip(range(G), stream)]
            if not group:
                return
            examples = [ex for ex, _ in group]
            point = group[-1][1]
            if len(group) < G:
                mine = examples[self.rank :: self.world_size]
                # Keep a short tail only if every rank gets some of it (equal batch counts).
                if self.drop_last or len(group) < self.world_size:
                    return
                yield self.collate_fn(mine), position + len(group), point
                return
            position += G
            yield self.collate_fn(examples[self.rank :: self.world_size]), position, point

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        source = self._batches() if self.num_workers == 0 else self._prefetched()
        for batch, position, point in source:
            self.position = position
            self.resume_point = point
            self.batches_in_epoch += 1
            yield batch
        # A finished pass starts over (same order) if iterated again without set_epoch.
        self.position = 0
        self.batches_in_epoch = 0
        self.resume_point = None

    def _prefetched(self) -> Iterator[tuple[dict[str, torch.Tensor], int, dict | None]]:
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


def _point(index: int, cursor: Any) -> dict[str, Any] | None:
    """A resume point: restart the stream at global example ``index`` from ``cursor`` (None: no cursor)."""
    return None if cursor is None else {"index": index, "cursor": cursor}

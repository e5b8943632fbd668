"""Batching in the training process: example dicts from the (worker) decoders become one
static-shape batch padded to a few bucket sizes, with the skip markers counted in a checkpointable
iterator. The batch format is described in jaxvrl/data/pipeline.py.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from model.config import VisionConfig
from model.packing import pack_vision

log = logging.getLogger(__name__)


class DataError(Exception):
    """Bad input in strict mode (the message names the record and the file), or a shard whose
    every example is skipped."""


class PipelineError(RuntimeError):
    """An error raised while reading a record that is not one of the bad inputs the pipeline
    counts and skips (a decoder crash, a bug): it ends the run, naming the record."""


def bucket(
    size: int, buckets: Sequence[int], multiple: int = 1, past_largest: str = "multiple"
) -> int:
    """The smallest of `buckets` >= size, rounded up to `multiple`. Past the largest bucket (a
    new shape, so jit compiles once more; the per-example limits make this rare): the next
    multiple of the largest (`past_largest="multiple"`), or `size` itself ("size")."""
    if past_largest not in ("multiple", "size"):
        raise ValueError(f"past_largest must be 'multiple' or 'size', got {past_largest!r}")
    ordered = sorted(buckets)
    out = next((b for b in ordered if size <= b), None)
    if out is None:
        largest = ordered[-1] if ordered and past_largest == "multiple" else 0
        out = -(-size // largest) * largest if largest else size
    return -(-max(out, 1) // multiple) * multiple


def pad_to(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`x` padded with zeros at the end of `axis` to `size`."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths)


@dataclasses.dataclass(frozen=True)
class Batcher:
    """Pads a list of example dicts into one static-shape batch (module docstring)."""

    batch_size: int
    token_buckets: tuple[int, ...]
    patch_buckets: tuple[int, ...]
    pad_id: int
    padding_side: str
    vision: VisionConfig
    with_shuffled: bool

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        b = self.batch_size
        length = bucket(max(r["input_ids"].shape[0] for r in rows), self.token_buckets)
        input_ids = np.full((b, length), self.pad_id, np.int32)
        attention = np.zeros((b, length), np.int32)
        positions = np.zeros((3, b, length), np.int32)
        loss_mask = np.zeros((b, length), np.int32)
        for i, r in enumerate(rows):
            n = r["input_ids"].shape[0]
            cols = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[i, cols] = r["input_ids"]
            attention[i, cols] = 1
            positions[:, i, cols] = r["positions"]
            loss_mask[i, cols] = r["loss_mask"]
        for i in range(len(rows), b):  # filler rows: one visible pad token
            attention[i, 0 if self.padding_side == "right" else length - 1] = 1
        total = sum(r["num_patches"] for r in rows)
        num_patches = bucket(total, self.patch_buckets)
        num_patches += -num_patches % self.vision.merge_unit
        grids = np.concatenate([r["grid_thw"] for r in rows]).reshape(-1, 3)
        vision = pack_vision([r["patches"] for r in rows], grids, self.vision, num_patches)
        fill = b - len(rows)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "positions": positions,
            "rope_deltas": np.asarray([r["rope_delta"] for r in rows] + [0] * fill, np.int32),
            "prompt_lengths": np.asarray([r["prompt_length"] for r in rows] + [1] * fill, np.int32),
            "loss_mask": loss_mask,
            "example_mask": np.asarray([True] * len(rows) + [False] * fill),
            "is_video": np.asarray([bool(r["is_video"]) for r in rows] + [False] * fill),
            "vision": vision,
        }
        if self.with_shuffled:
            shuffled = np.zeros(vision["patches"].shape, np.float32)
            start = 0
            for r in rows:
                count = r["shuffled_patches"].shape[0]
                shuffled[start : start + count] = r["shuffled_patches"]
                start += count
            batch["vision_shuffled"] = {**vision, "patches": shuffled}
        meta: dict[str, list] = collections.defaultdict(list)
        for r in rows:
            for key, value in r["meta"].items():
                meta[key].append(value)
        for values in meta.values():  # filler rows: empty strings / lists
            values.extend([type(values[0])()] * fill)
        batch["meta"] = dict(meta)
        return batch


class BucketBatchDataset(grain.IterDataset):
    """Batches a stream of example dicts and skip markers; counts the skips (part of the
    iterator state, so they survive a restore)."""

    def __init__(
        self,
        parent: grain.IterDataset,
        batcher: Batcher,
        initial_skips: Mapping[str, int] | None = None,
        drop_remainder: bool = False,
        epoch_size: int = 0,
    ):
        super().__init__(parent)
        self._batcher = batcher
        self._initial_skips = dict(initial_skips or {})
        self._drop_remainder = drop_remainder
        self._epoch_size = epoch_size

    def __iter__(self) -> BucketBatchIterator:
        return BucketBatchIterator(
            self._parent.__iter__(),
            self._batcher,
            self._initial_skips,
            self._drop_remainder,
            self._epoch_size,
        )

    def __str__(self) -> str:
        return f"BucketBatchDataset(batch_size={self._batcher.batch_size})"


class BucketBatchIterator(grain.DatasetIterator):
    """Iterator of BucketBatchDataset. get_state/set_state hold the upstream position and the
    skip counts; the state is plain JSON-serialisable data. Raises DataError when a whole epoch
    (`epoch_size` examples) in a row is skipped, instead of looping forever."""

    def __init__(
        self,
        parent: grain.DatasetIterator,
        batcher: Batcher,
        initial_skips: Mapping[str, int],
        drop_remainder: bool,
        epoch_size: int = 0,
    ):
        super().__init__(parent)
        self._batcher = batcher
        self._skips: collections.Counter[str] = collections.Counter(initial_skips)
        self._drop_remainder = drop_remainder
        self._epoch_size = epoch_size

    def __next__(self) -> dict[str, Any]:
        rows = []
        skipped_in_a_row = 0
        while len(rows) < self._batcher.batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                break
            if "skip" in element:
                self._skips[element["skip"]] += 1
                log.warning("skipping %s", element["message"])
                skipped_in_a_row += 1
                if self._epoch_size and skipped_in_a_row >= self._epoch_size:
                    raise DataError(
                        f"all {self._epoch_size} examples of this shard were skipped "
                        f"({dict(self._skips)}); the last: {element['message']}"
                    )
                continue
            skipped_in_a_row = 0
            rows.append(element)
        if not rows or (self._drop_remainder and len(rows) < self._batcher.batch_size):
            raise StopIteration
        batch = self._batcher(rows)
        batch["meta"]["skipped"] = sum(self._skips.values())
        batch["meta"]["skip_counts"] = dict(self._skips)
        return batch

    def skip_counts(self) -> dict[str, int]:
        """Records and examples skipped so far, by category."""
        return dict(self._skips)

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent.get_state(),
            "skip_counts": json.dumps(dict(sorted(self._skips.items()))),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._skips = collections.Counter(json.loads(state["skip_counts"]))

    def close(self) -> None:
        self._parent.close()
        super().close()

    def __str__(self) -> str:
        return "BucketBatchIterator"

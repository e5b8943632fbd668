"""The sampler's prompts (host side): a batch of prompt rows, right-padded, built from a data
pipeline batch, with T-GRPO's shuffled-frame companion rows appended (the same tokens, the video's
frames shuffled), sampled in the same call as their ordered prompts (jaxvrl/rollout/sampler.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.config import VisionConfig
from model.packing import pack_vision


@dataclasses.dataclass
class Prompts:
    """A batch of prompts, host-side NumPy, right-padded (left padding is moved to the right).

    input_ids, attention_mask: [P, L]; positions: [3, P, L] (model.rope.rope_index); rope_deltas:
    [P]; vision: model.packing.pack_vision dict of all rows' items in pad-token order, or None;
    seeds: [P] int, an id of each prompt that seeds its PRNG stream (use an example id, not the row:
    then a prompt's samples do not depend on the rest of the batch; default: the row index).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray
    rope_deltas: np.ndarray
    vision: dict[str, np.ndarray] | None = None
    seeds: np.ndarray | None = None

    def __post_init__(self):
        ids = np.asarray(self.input_ids, np.int32)
        mask = np.asarray(self.attention_mask).astype(bool)
        positions = np.asarray(self.positions, np.int32)
        p, length = ids.shape
        if mask.shape != (p, length) or positions.shape != (3, p, length):
            raise ValueError(
                f"shapes do not agree: input_ids {ids.shape}, attention_mask {mask.shape}, "
                f"positions {positions.shape} (expected [3, {p}, {length}])"
            )
        if not mask.any(axis=1).all():
            raise ValueError("every prompt row needs at least one valid token")
        lengths = mask.sum(axis=1)
        if not (mask == (np.arange(length)[None] < lengths[:, None])).all():
            # Left (or gapped) padding: move each row's valid tokens to the front.
            order = np.argsort(~mask, axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
            positions = np.take_along_axis(positions, order[None], axis=2)
            mask = np.arange(length)[None] < lengths[:, None]
        self.input_ids, self.attention_mask, self.positions = ids, mask, positions
        self.rope_deltas = np.asarray(self.rope_deltas, np.int32).reshape(p)
        self.seeds = (
            np.arange(p, dtype=np.int32)
            if self.seeds is None
            else np.asarray(self.seeds).astype(np.int64).astype(np.int32).reshape(p)
        )
        if self.vision is not None:
            self.vision = {k: np.asarray(v) for k, v in self.vision.items()}

    @property
    def num_prompts(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> np.ndarray:
        """Valid tokens per row: [P]."""
        return self.attention_mask.sum(axis=1).astype(np.int32)

    @classmethod
    def from_batch(cls, batch: dict[str, Any], seeds: Sequence[int] | None = None) -> Prompts:
        """From a jaxvrl.data.pipeline batch (input_ids, attention_mask, positions, rope_deltas,
        vision). `seeds` may cover only the real rows (the batch's meta does): filler rows at the
        end get their row index."""
        p = np.asarray(batch["input_ids"]).shape[0]
        if seeds is not None:
            seeds = np.asarray(seeds, np.int64)
            if seeds.size > p:
                raise ValueError(f"{seeds.size} seeds for {p} prompt rows")
            seeds = np.concatenate([seeds, np.arange(seeds.size, p)])
        return cls(
            batch["input_ids"],
            batch["attention_mask"],
            batch["positions"],
            batch["rope_deltas"],
            batch.get("vision"),
            seeds,
        )

    def with_companions(
        self,
        vision_shuffled: dict[str, np.ndarray],
        rows: Sequence[int],
        grid_thw: Sequence[Sequence[Sequence[int]]],
        vision_config: VisionConfig,
        seeds: Sequence[int] | None = None,
    ) -> Prompts:
        """These prompts followed by a T-GRPO companion of each row in `rows`: the same tokens
        and positions with the items' patches taken from `vision_shuffled` (same packing as
        `self.vision`, frames shuffled). grid_thw: per row, the (t, h, w) of its items in order.
        Rows past the end of `grid_thw` (filler rows) hold no items. Companion seeds default to
        -1 - seed (a stream distinct from the ordered prompt's)."""
        if self.vision is None:
            raise ValueError("companions need vision inputs (T-GRPO shuffles video frames)")
        rows = [int(r) for r in rows]
        grids = [np.asarray(g, np.int64).reshape(-1, 3) for g in grid_thw]
        if len(grids) > self.num_prompts:
            raise ValueError(f"grid_thw has {len(grids)} rows for {self.num_prompts} prompts")
        grids += [np.zeros((0, 3), np.int64)] * (self.num_prompts - len(grids))
        counts = [int(np.prod(g, axis=1).sum()) for g in grids[: self.num_prompts]]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        total = int(offsets[-1])
        items = [self.vision["patches"][:total]]
        items += [vision_shuffled["patches"][offsets[r] : offsets[r + 1]] for r in rows]
        all_grids = np.concatenate(grids[: self.num_prompts] + [grids[r] for r in rows])
        vision = pack_vision(np.concatenate(items), all_grids, vision_config)
        extra = -1 - self.seeds[rows].astype(np.int64) if seeds is None else np.asarray(seeds)
        return Prompts(
            np.concatenate([self.input_ids, self.input_ids[rows]]),
            np.concatenate([self.attention_mask, self.attention_mask[rows]]),
            np.concatenate([self.positions, self.positions[:, rows]], axis=1),
            np.concatenate([self.rope_deltas, self.rope_deltas[rows]]),
            vision,
            np.concatenate([self.seeds.astype(np.int64), extra]),
        )

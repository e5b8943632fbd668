"""The Grain input pipeline: records -> (worker processes) decoded, tokenised examples -> batches
padded to a few bucket sizes, with a checkpointable iterator.

    dataset = build_dataset(config)          # grain.IterDataset of batches
    it = iter(dataset)
    batch = next(it)
    state = it.get_state()                   # JSON-serialisable; it.set_state(state) resumes

Order of operations: a seeded shuffle of all records that differs per epoch (one global order,
whatever the number of processes), this process's block of every global batch (`BlockShard`),
decoding + tokenising in `num_workers` processes (`mp_prefetch`; 0 decodes here), then batching
in this process. The output does not depend on the number of workers. Bad input becomes a skip
marker in the workers and is counted here; the next example of the process's stream takes its
place, so with bad records the processes' blocks shift apart from the single process's batches.

A batch (B = data.batch_size / process_count rows: this process's block of the global batch,
L = a token bucket, N = a patch bucket, D = the flattened patch size C*T*P*P):

    input_ids       [B, L] int32   pad token at padding
    attention_mask  [B, L] int32   1 = token
    positions       [3, B, L] int32  M-RoPE ids (model.rope.rope_index), 0 at padding
    rope_deltas     [B] int32      text position - token index after the prompt (decoding)
    prompt_lengths  [B] int32      prompt tokens per row
    loss_mask       [B, L] int32   1 on SFT target tokens (all 0 without data.sft_target)
    example_mask    [B] bool       False on filler rows (only in a last, partial batch)
    is_video        [B] bool       the row holds a video (T-GRPO applies)
    vision          dict of model.packing.pack_vision arrays: patches [N, D] float32,
                    pos_hw [N, 2], segment_ids [N], window_ids [N], window_index [N/4] int32
    vision_shuffled the same with the video frames shuffled (only when data.shuffle_unit is
                    not "none"; images keep their patches)
    meta            host-only: lists of str per row (uid, source, data_type, problem_type,
                    solution, process, data_source, origin, extra as JSON), per row and
                    vision item: media_kinds, grid_thw, num_frames; and the skip counts so far
                    ("skipped": total, "skip_counts": by category)

Filler rows hold one pad token with attention_mask 1 (so no row is fully masked),
example_mask False and empty meta entries; every per-row meta list has B entries.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from jaxvrl.data import media as media_lib
from jaxvrl.data import prompts as prompts_lib
from jaxvrl.data import records as records_lib
from jaxvrl.data import synthetic
from jaxvrl.data import vision_inputs as vi
from jaxvrl.data.batching import Batcher, BucketBatchDataset, DataError, PipelineError
from model.config import ModelConfig, VisionConfig

log = logging.getLogger(__name__)

SHUFFLE_UNITS = ("frame", "tubelet", "none")


# ------------------------------------------------------------------------------------------------
# Settings gathered from the config (plain, picklable values for the workers).


def model_config_for(config) -> ModelConfig:
    """The model's ModelConfig from `config.model.path` (its config.json)."""
    if not config.model.path:
        raise ValueError("config.model.path must name a local checkpoint directory")
    return ModelConfig.from_pretrained(config.model.path)


def tokenizer_path_for(config) -> str:
    return str(config.model.get("tokenizer_path") or config.model.path)


def vision_spec(vision: VisionConfig) -> vi.VisionSpec:
    return vi.VisionSpec.of(vision)


def _sorted_ints(values: Any, name: str) -> tuple[int, ...]:
    out = tuple(sorted(int(v) for v in values))
    if not out or out[0] <= 0:
        raise ValueError(f"data.{name} must hold positive sizes, got {values!r}")
    return out


# ------------------------------------------------------------------------------------------------
# One example: media -> patches, prompt -> tokens (runs in the workers).


def _skip(category: str, message: str) -> dict[str, Any]:
    return {"skip": category, "message": message}


class ExampleProcessor:
    """Decodes, samples, resizes and patchifies an example's media and tokenises its prompt.

    Called as `processor(index, example)` by Grain's `map_with_index`: the index (the position in
    the shuffled, repeated stream) seeds the T-GRPO frame shuffle, so results do not depend on
    which worker runs it. Returns an example dict, or a skip marker {"skip": category,
    "message": "record: reason"} (strict mode raises DataError instead).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        model_config: ModelConfig,
        tokenizer_path: str,
        *,
        summary_only: bool = False,
    ):
        self.model_config = model_config
        self.tokenizer_path = tokenizer_path
        self.sampling = media_lib.FrameSampling.from_config(data)
        self.settings = prompts_lib.PromptSettings.from_config(data)
        self.spec = vision_spec(model_config.vision)
        self.media_root = str(data.get("media_root", ""))
        self.shuffle_unit = str(data.get("shuffle_unit", "none"))
        if self.shuffle_unit not in SHUFFLE_UNITS:
            raise ValueError(f"data.shuffle_unit must be one of {SHUFFLE_UNITS}")
        self.seed = int(data.get("seed") or 0)
        self.strict = bool(data.get("strict", False))
        self.max_tokens = _sorted_ints(data["token_buckets"], "token_buckets")[-1]
        self.max_patches = _sorted_ints(data["patch_buckets"], "patch_buckets")[-1]
        self.summary_only = summary_only
        self._builder: prompts_lib.PromptBuilder | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_builder"] = None  # workers load their own tokenizer
        return state

    @property
    def builder(self) -> prompts_lib.PromptBuilder:
        if self._builder is None:
            tokenizer = prompts_lib.load_tokenizer(self.tokenizer_path)
            self._builder = prompts_lib.PromptBuilder(tokenizer, self.model_config, self.settings)
        return self._builder

    def __call__(self, index: int, example: records_lib.Example) -> dict[str, Any]:
        try:
            return self.process(int(index), example)
        except media_lib.MediaError as e:
            category, message = e.category, f"{example.origin}: {e}"
        except KeyError as e:  # a problem type without an instruction
            category, message = "unknown_problem_type", f"{example.origin}: {e.args[0]}"
        except _TooLong as e:
            category, message = "too_long", f"{example.origin}: {e}"
        except Exception as e:  # noqa: BLE001 - not a bad record: end the run, naming it
            raise PipelineError(f"reading record {example.origin}: {type(e).__name__}: {e}") from e
        if self.strict:
            raise DataError(message)
        return _skip(category, message)

    def process(self, index: int, example: records_lib.Example) -> dict[str, Any]:
        """The example dict (see module docstring for what batching makes of it)."""
        rng = np.random.default_rng([self.seed, index])
        items, shuffled, frame_counts = [], [], []
        for m in example.media:
            path = records_lib.resolve_path(m.path, self.media_root)
            frames = media_lib.read_media(m.kind, path, self.sampling, self.spec, m.num_frames)
            item = vi.vision_input(
                frames.frames, frames.kind, self.spec, frames.sample_fps, frames.times
            )
            items.append(item)
            frame_counts.append(int(frames.frames.shape[0]))
            if self.shuffle_unit != "none" and not self.summary_only:
                if item.kind == "video":
                    shuffled.append(vi.shuffled_patches(item, self.shuffle_unit, self.spec, rng))
                else:
                    shuffled.append(item.patches)
        tokens = self.builder.tokens(example, items)
        num_patches = sum(i.num_patches for i in items)
        if len(tokens.input_ids) > self.max_tokens:
            raise _TooLong(
                f"{len(tokens.input_ids)} tokens > largest token bucket {self.max_tokens}"
            )
        if num_patches > self.max_patches:
            raise _TooLong(f"{num_patches} patches > largest patch bucket {self.max_patches}")
        meta = {
            "uid": example.uid,
            "source": example.source,
            "data_type": example.data_type,
            "problem_type": example.problem_type,
            "solution": example.solution,
            "process": example.process,
            "data_source": example.data_source,
            "origin": example.origin,
            "extra": json.dumps(dict(example.extra)),
            "media_kinds": [i.kind for i in items],
            "grid_thw": [list(i.grid_thw) for i in items],
            "num_frames": frame_counts,
        }
        out: dict[str, Any] = {
            "num_tokens": len(tokens.input_ids),
            "num_patches": num_patches,
            "is_video": any(i.kind == "video" for i in items),
            "meta": meta,
        }
        if self.summary_only:
            return out
        d = self.spec.temporal_patch_size * self.spec.patch_size**2 * 3
        out.update(
            input_ids=tokens.input_ids,
            positions=tokens.positions,
            loss_mask=tokens.loss_mask,
            rope_delta=tokens.rope_delta,
            prompt_length=tokens.prompt_length,
            patches=np.concatenate([i.patches for i in items])
            if items
            else np.zeros((0, d), np.float32),
            grid_thw=np.asarray([i.grid_thw for i in items], np.int32).reshape(-1, 3),
        )
        if self.shuffle_unit != "none":
            out["shuffled_patches"] = np.concatenate(shuffled) if shuffled else out["patches"]
        return out


class _TooLong(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# The dataset.


def load_examples(config) -> tuple[list[records_lib.Example], list[records_lib.RecordError]]:
    """All records of `config.data.train_files`, and the ones that will be skipped (malformed or
    of an unknown problem type). Strict mode raises DataError on the first bad record."""
    data = config.data
    examples, errors = records_lib.load_examples(
        data.train_files,
        records_lib.RecordOptions.from_config(data),
        known_problem_types=list(data.type_instructions.keys()),
    )
    if errors and data.strict:
        raise DataError(str(errors[0]))
    return examples, errors


def skip_category(error: records_lib.RecordError) -> str:
    return "unknown_problem_type" if "unknown problem type" in error.reason else "malformed_record"


def _ensure_flags_parsed() -> None:
    """Grain's worker processes read absl flags; programs that never parse flags (pytest, plain
    scripts) get the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BlockShard(grain.MapDataset):
    """This process's rows of every global batch: of each `batch_size` consecutive elements of
    the parent, the block `process_index` of `process_count` equal blocks. With one process the
    parent itself; with P, the union of the processes' blocks is the single process's stream."""

    def __init__(
        self, parent: grain.MapDataset, batch_size: int, process_index: int, process_count: int
    ):
        super().__init__(parent)
        if batch_size % process_count:
            raise ValueError(f"batch size {batch_size} is not divisible by {process_count}")
        self._global, self._block = batch_size, batch_size // process_count
        self._index, self._count = process_index, process_count
        total = len(parent)
        full, rest = divmod(total, batch_size)
        tail = min(max(rest - process_index * self._block, 0), self._block)
        self._length = full * self._block + tail

    def __len__(self) -> int:
        return self._length

    def parent_index(self, index: int) -> int:
        batch, row = divmod(index, self._block)
        return batch * self._global + self._index * self._block + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.parent_index(index)]

    def __str__(self) -> str:
        return f"BlockShard(block {self._index} of {self._count}, batch {self._global})"


def build_dataset(
    config,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int | None = None,
) -> BucketBatchDataset:
    """The training input pipeline of `config` for this JAX process (see module docstring).

    process_index / process_count default to jax.process_index() / jax.process_count(); the
    batch size per process is data.batch_size / process_count.
    """
    data = config.data
    synthetic.ensure_from_config(config)
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if data.batch_size % process_count:
        raise ValueError(
            f"data.batch_size {data.batch_size} is not divisible by {process_count} processes"
        )
    if data.padding_side not in ("left", "right"):
        raise ValueError(f"data.padding_side must be 'left' or 'right', got {data.padding_side!r}")
    model_config = model_config_for(config)
    tokenizer_path = tokenizer_path_for(config)
    processor = ExampleProcessor(data.to_dict(), model_config, tokenizer_path)
    tokenizer = prompts_lib.load_tokenizer(tokenizer_path)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model_config.pad_token_id if model_config.pad_token_id is not None else 0

    examples, errors = load_examples(config)
    for e in errors:
        log.warning("skipping %s", e)
    # Records rejected on loading count once over the processes (process 0's).
    initial = collections.Counter(skip_category(e) for e in errors if process_index == 0)
    if len(examples) < process_count:
        raise ValueError(f"{len(examples)} examples for {process_count} processes")

    # One global order (the same whatever the number of processes); the example at global
    # position i is processed with index i; this process reads its block of each global batch.
    ds = grain.MapDataset.source(examples)
    if data.shuffle:
        ds = ds.shuffle(seed=int(data.seed or 0))
    ds = ds.repeat(None if int(data.num_epochs) == 0 else int(data.num_epochs))
    ds = ds.map_with_index(processor)
    ds = BlockShard(ds, int(data.batch_size), process_index, process_count)
    read = grain.ReadOptions(
        num_threads=int(data.get("read_threads", 1)),
        prefetch_buffer_size=int(data.get("read_buffer_size", 2)),
    )
    stream = ds.to_iter_dataset(read)
    workers = int(data.num_workers if num_workers is None else num_workers)
    if workers > 0:
        _ensure_flags_parsed()
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=int(data.worker_buffer_size)
            )
        )
    batcher = Batcher(
        batch_size=data.batch_size // process_count,
        token_buckets=_sorted_ints(data.token_buckets, "token_buckets"),
        patch_buckets=_sorted_ints(data.patch_buckets, "patch_buckets"),
        pad_id=int(pad_id),
        padding_side=str(data.padding_side),
        vision=model_config.vision,
        with_shuffled=data.shuffle_unit != "none",
    )
    return BucketBatchDataset(
        stream, batcher, initial, epoch_size=-(-len(examples) // process_count)
    )

"""Group rollout: the vision tower and the prefill run once per prompt, the prompt's keys and
values are shared by its G samples, and every sample decodes in one jitted `lax.while_loop` that
stops when all samples have finished or at max_new_tokens.

    sampler = Sampler(model, mesh=mesh, config=RolloutConfig(), tokenizer=tokenizer)
    prompts = Prompts.from_batch(batch, seeds=example_ids)          # [P] prompt rows
    out = sampler.sample(state, prompts, 8, SamplingParams(temperature=1.0, top_p=0.95), seed=step)
    out.tokens, out.logprobs, out.mask, out.lengths, out.finish_reason, out.texts

T-GRPO: the shuffled-frame companion of a video prompt is one more prompt row (prompt_batch.py)
with its own sample count, sampled in the same call:

    video_rows = np.flatnonzero(batch["is_video"] & batch["example_mask"])
    both = prompts.with_companions(batch["vision_shuffled"], video_rows,
                                   batch["meta"]["grid_thw"], model.config.vision)
    counts = [G] * prompts.num_prompts + [G // 2] * len(video_rows)
    out = sampler.sample(state, both, counts, params, seed=step)
    # samples of prompt row r: out.sample_to_prompt == r (companion of video_rows[i]: row P + i)

One program (group_decode.py `group_rollout`) does everything: vision in chunks of whole
temporal slices, prefill, decoding with samples laid out as groups [P, G] that read their prompt's
cache in place (not a copy per sample). It is compiled once per static shape: prompt rows and
prompt length (bucketed), vision chunks (bucketed), the group width G, max_new_tokens and the
static sampling options (top-k, whether top-p is on, greedy, min_new_tokens, stop tokens).
Temperature and top-p values are runtime inputs. Parameters enter as a jit argument (nnx.split),
so they are never baked into the program. On a mesh the parameters are resharded once per rollout
to a decode layout (by default the training rules with `embed` replicated: FSDP shards are
gathered once, not on every token, while tensor parallelism stays); prompts, their samples and the
vision chunks are split over the batch axes, and each batch shard samples its own rows.

Log-probs are those of the sampling policy as TRL/Video-R1 recompute them: log-softmax of the
temperature-scaled, unfiltered logits (see sampling.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from jaxvrl.data.batching import bucket
from jaxvrl.parallel import multihost, placement
from jaxvrl.rollout import group_decode, vision_chunks
from jaxvrl.rollout.group_decode import Static, logical_sharding
from jaxvrl.rollout.prompt_batch import Prompts
from model.config import ModelConfig, VisionConfig
from model.sharding import DEFAULT_RULES, Rules, activation_rules, state_shardings

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature` and `top_p` are runtime values (changing them does not
    recompile); the other fields are part of the compiled program."""

    max_new_tokens: int = 768
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    greedy: bool = False
    # Stop tokens are suppressed (logit -inf) before this many new tokens, as in HF generate.
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] | None = None  # None: `default_stop_tokens(model config)`

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static-shape buckets and the decode layout. A size past the largest bucket rounds up to a
    multiple of the largest (one more program)."""

    # Prompt length (tokens); steps of ~1.5x bound the padding waste.
    prompt_buckets: tuple[int, ...] = (
        128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384,
    )  # fmt: skip
    # Prompt rows (prompts and companions), rounded up to a multiple of the mesh's batch-axis size
    # too. With T-GRPO the companion count varies per batch; one bucket at the largest count
    # (2 * batch) keeps a single program.
    prompt_row_buckets: tuple[int, ...] = ()
    # Samples per prompt row: the group width G of the decode layout (the largest count).
    group_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # Vision patches incl. padding. The tower runs on chunks of whole temporal slices of
    # `vision_chunk_patches` patches (raised to the largest slice; 0 = fitted to each batch's
    # largest slice, vision_chunks.vision_chunks): bucket(chunks x chunk size) / chunk size
    # chunks. Fitted sizes are 256, 512 or 1024 for slices up to 1024 patches, so data that mixes
    # slice sizes (e.g. 512-patch video frames and 1024-patch images) compiles up to one program
    # per size for each prompt bucket; a fixed size (e.g. 1024) keeps one.
    patch_buckets: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    vision_chunk_patches: int = 0
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES  # batch axes and the training layout
    decode_rules: tuple[tuple[str, Any], ...] | None = None  # None: `decode_rules(rules)`


def decode_rules(rules: Rules = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
    """The decode layout: `embed` replicated (no FSDP gather per token), everything else as in
    `rules` (tensor parallelism over heads / mlp / vocab stays)."""
    return tuple((name, None if name == "embed" else target) for name, target in rules)


def default_stop_tokens(
    config: ModelConfig, tokenizer: Any = None, checkpoint_dir: str | os.PathLike | None = None
) -> tuple[int, ...]:
    """Stop tokens: the model config's eos ids, the tokenizer's eos id, and the eos ids of the
    checkpoint's generation_config.json (Qwen2-VL-Instruct: <|im_end|> and <|endoftext|>)."""
    ids = set(config.eos_token_id)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    if checkpoint_dir is not None:
        path = os.path.join(os.fspath(checkpoint_dir), "generation_config.json")
        if os.path.isfile(path):
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return tuple(sorted(int(i) for i in ids))


# ------------------------------------------------------------------------------------------------
# Output.


@struct.dataclass
class Rollout:
    """Samples of one `Sampler.sample` call (S samples, M = max_new_tokens).

    tokens [S, M] int32: completion tokens, the stop token included, pad after the end.
    logprobs [S, M] float32: log softmax(logits / temperature) of each sampled token over the
        unfiltered logits (TRL/Video-R1's `logp_old`), 0 after the end.
    mask [S, M] bool: completion tokens (stop token included).
    lengths [S] int32: completion lengths. finish_reason [S] int32: FINISH_STOP / FINISH_LENGTH.
    sample_to_prompt [S] int32: the prompt row of each sample; sample_index [S] int32: its index
        among that prompt's samples. prompt_lengths [S] int32: valid prompt tokens of its prompt.
    num_steps: int32 scalar, decoding steps run (<= M; fewer when all samples stopped early).
    texts: decoded completions (`skip_special_tokens`), when the sampler has a tokenizer.
    All of it on the host (numpy), brought there in one transfer.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray
    sample_to_prompt: np.ndarray
    sample_index: np.ndarray
    prompt_lengths: np.ndarray
    num_steps: np.ndarray
    texts: tuple[str, ...] | None = struct.field(pytree_node=False, default=None)


def decode_texts(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray) -> tuple[str, ...]:
    """Host-side text of each completion (its first `length` tokens, special tokens skipped)."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    seqs = [tokens[i, : lengths[i]].tolist() for i in range(tokens.shape[0])]
    return tuple(tokenizer.batch_decode(seqs, skip_special_tokens=True))


def _num_features(vision: dict[str, np.ndarray] | None, config: VisionConfig) -> int:
    """Merged vision features of a packed input (its real patches / merge unit)."""
    if vision is None:
        return 0
    return sum(h * w for _, h, w in vision_chunks.vision_slices(vision)) // config.merge_unit


# ------------------------------------------------------------------------------------------------
# The sampler.


class Sampler:
    """Compiles and runs the rollout program; one compiled program per static shape.

    `num_compilations` and `compile_seconds` count the programs built so far (for the trainer's
    logs); every compilation is also logged at INFO level with its shapes and compile time.
    `device_seconds` sums the time of every call's program until its outputs are ready
    (compiles excluded), so that a caller can tell the host's share of a step from the
    device's.
    """

    def __init__(
        self,
        model: nnx.Module,
        *,
        mesh: Mesh | None = None,
        config: RolloutConfig | None = None,
        tokenizer: Any = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        self.graphdef, abstract_state = nnx.split(model)
        self.model_config: ModelConfig = model.config
        self.config = config or RolloutConfig()
        if mesh is None:
            mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.stop_tokens = default_stop_tokens(self.model_config, tokenizer, checkpoint_dir)
        self.decode_rules = self.config.decode_rules or decode_rules(self.config.rules)
        self.decode_shardings = state_shardings(abstract_state, mesh, self.decode_rules)
        self.batch_axis_size = placement.batch_axis_size(mesh, self.config.rules)
        self.num_compilations = 0
        self.compile_seconds = 0.0
        self.device_seconds = 0.0
        self._programs: dict[Any, Any] = {}

    # -- host-side preparation -------------------------------------------------------------------

    def _put(self, x: np.ndarray, axes: Sequence[str | None]) -> jax.Array:
        """This process's block of an input (its rows along the `batch` axis; with several
        processes the global array holds every process's block in process order)."""
        axis = list(axes).index("batch") if "batch" in axes else None
        shape = list(x.shape)
        if axis is not None:
            shape[axis] *= multihost.count()
        sharding = logical_sharding(self.mesh, self.config.rules, axes, shape)
        return self._place(x, sharding, axis)

    def _place(self, x: np.ndarray, sharding: NamedSharding, axis: int | None = None) -> Any:
        """Puts one host input on the mesh: this process's rows along `axis` (None: the same on
        every process). jaxvrl.fit overrides this to compile from shapes."""
        return multihost.global_array(x, sharding, axis)

    def _prepare_prompts(
        self,
        prompts: Prompts,
        rows: int,
        length: int,
        vision_sizes: tuple[int, int],
        chunked: tuple[dict[str, np.ndarray], np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Inputs of `rows` prompt rows (this process's) padded to `length` tokens; vision in
        chunks of `vision_sizes` = (patches per chunk, chunks) when the batch has vision (reusing
        `chunked`, this process's chunks from `_agreed_sizes`, where they have those sizes)."""
        p = prompts.num_prompts
        pad_id = self.model_config.pad_token_id or 0

        def fit(x: np.ndarray, axis: int, size: int, value=0) -> np.ndarray:
            x = np.take(x, np.arange(min(size, x.shape[axis])), axis=axis)
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, size - x.shape[axis])
            return np.pad(x, widths, constant_values=value)

        mask = fit(fit(prompts.attention_mask, 1, length), 0, rows)
        mask[p:, 0] = True  # filler rows: one visible token, so no row is fully masked
        out = {
            "input_ids": self._put(
                fit(fit(prompts.input_ids, 1, length, pad_id), 0, rows, pad_id), ("batch", None)
            ),
            "attention_mask": self._put(mask, ("batch", None)),
            "positions": self._put(
                fit(fit(prompts.positions, 2, length), 1, rows), (None, "batch", None)
            ),
            "rope_deltas": self._put(fit(prompts.rope_deltas, 0, rows), ("batch",)),
            "prompt_seeds": self._put(fit(prompts.seeds, 0, rows), ("batch",)),
            "chunks": None,
            "feature_index": None,
        }
        if vision_sizes[1]:
            chunk_patches, num_chunks = vision_sizes
            if chunked is not None and chunked[0]["patches"].shape[:2] == (
                num_chunks,
                chunk_patches,
            ):
                chunks, index = chunked
            else:
                chunks, index = self._vision_chunks(prompts.vision, chunk_patches, num_chunks)
            out["chunks"] = {k: self._put(v, ("batch",)) for k, v in chunks.items()}
            index = multihost.global_feature_index(
                index, _num_features(prompts.vision, self.model_config.vision), index.size
            )
            out["feature_index"] = self._put(index, ())
        return out

    def _vision_chunks(
        self, vision: dict[str, np.ndarray] | None, chunk_patches: int, num_chunks: int = 0
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """This process's vision in chunks (vision_chunks.vision_chunks): at least `num_chunks`,
        a multiple of the batch devices of this process; a process without vision (all its rows
        text) gets empty chunks."""
        per_process = max(1, self.batch_axis_size // multihost.count())
        return vision_chunks.vision_chunks(
            vision if vision is not None else vision_chunks.empty_vision(self.model_config.vision),
            self.model_config.vision,
            chunk_patches,
            self.config.patch_buckets,
            per_process,
            num_chunks,
        )

    def _agreed_sizes(
        self, prompts: Prompts, counts: np.ndarray
    ) -> tuple[dict[str, int], tuple[dict[str, np.ndarray], np.ndarray] | None]:
        """Rows, group, prompt length and vision chunking every process uses for this call
        (the largest each needs; with one process what this batch needs), and this process's
        vision chunks as last computed (None without vision)."""
        p = prompts.num_prompts
        local = {
            "prompts": p,
            "group": int(counts.max()),
            "length": int(prompts.lengths.max()),
            "chunk_patches": 0,
            "num_chunks": 0,
        }
        chunked = None
        if prompts.vision is not None:
            chunked = self._vision_chunks(prompts.vision, self.config.vision_chunk_patches)
            chunks = chunked[0]
            local["chunk_patches"] = int(chunks["patches"].shape[1])
            local["num_chunks"] = int(chunks["patches"].shape[0])
        agreed = multihost.agree_max(local)
        if multihost.count() > 1 and agreed["chunk_patches"]:
            # The chunk count at the agreed chunk size (a larger chunk may need another count).
            local_k = 0
            if prompts.vision is not None:
                chunked = self._vision_chunks(prompts.vision, agreed["chunk_patches"])
                local_k = int(chunked[0]["patches"].shape[0])
            agreed["num_chunks"] = multihost.agree_max({"num_chunks": local_k})["num_chunks"]
        return agreed, chunked

    # -- compilation -----------------------------------------------------------------------------

    def jitted(self, static: Static) -> Any:
        """The rollout program for `static`, jitted (call or lower it with `prepare`'s args).
        It is traced under the decode rules (model.sharding.activation_rules): its weights are in
        the decode layout, so the embedding's rows are gathered whole where they lie."""
        rollout = functools.partial(
            group_decode.group_rollout,
            self.graphdef,
            static,
            self.mesh,
            self.config.rules,
            self.decode_shardings,
        )

        def in_decode_layout(*args):
            with activation_rules(self.decode_rules):
                return rollout(*args)

        return jax.jit(in_decode_layout)

    def _program(self, static: Static, args: tuple) -> Any:
        leaves, treedef = jax.tree.flatten(args)
        signature = tuple(
            (leaf.shape, str(leaf.dtype), getattr(leaf, "sharding", None)) for leaf in leaves
        )
        key = (static, treedef, signature)
        program = self._programs.get(key)
        if program is not None:
            return program
        start = time.perf_counter()
        program = self.jitted(static).lower(*args).compile()
        seconds = time.perf_counter() - start
        self._programs[key] = program
        self.num_compilations += 1
        self.compile_seconds += seconds
        ids, chunks, active = args[1], args[5], args[7]
        log.info(
            "rollout: compiled program %d (prompts %s, vision chunks %s, groups %s, max_new_tokens "
            "%d, top_k %d, top_p %s, greedy %s) in %.2f s",
            self.num_compilations,
            "x".join(map(str, ids.shape)),
            None if chunks is None else "x".join(map(str, chunks["patches"].shape[:2])),
            "x".join(map(str, active.shape)),
            static.max_new_tokens,
            static.top_k,
            static.use_top_p,
            static.greedy,
            seconds,
        )
        return program

    def prepare(
        self,
        state: nnx.State,
        prompts: Prompts,
        samples_per_prompt: int | Sequence[int],
        params: SamplingParams,
        seed: int = 0,
    ) -> tuple[Static, tuple, np.ndarray]:
        """The static options, the program's arguments (inputs placed on the mesh) and the
        active sample slots [rows, G] of one `sample` call."""
        p = prompts.num_prompts
        counts = np.asarray(
            [samples_per_prompt] * p
            if isinstance(samples_per_prompt, int | np.integer)
            else list(samples_per_prompt),
            np.int64,
        )
        if counts.shape != (p,) or (counts < 0).any() or counts.sum() == 0:
            raise ValueError(f"need one non-negative sample count per prompt row, got {counts}")
        # With several processes each passes its own prompts; all use the largest sizes.
        sizes, chunked = self._agreed_sizes(prompts, counts)
        n = multihost.count()
        everyone = sizes["prompts"] * n
        rows = bucket(everyone, self.config.prompt_row_buckets or (everyone,), self.batch_axis_size)
        rows //= n  # this process's rows
        group = bucket(sizes["group"], self.config.group_buckets)
        length = bucket(sizes["length"], self.config.prompt_buckets)
        active = np.zeros((rows, group), bool)
        active[:p] = np.arange(group)[None] < counts[:, None]
        arrays = self._prepare_prompts(
            prompts, rows, length, (sizes["chunk_patches"], sizes["num_chunks"]), chunked
        )
        stops = self.stop_tokens if params.stop_token_ids is None else params.stop_token_ids
        static = Static(
            max_new_tokens=params.max_new_tokens,
            top_k=params.top_k,
            use_top_p=params.top_p < 1.0,
            greedy=params.greedy,
            min_new_tokens=params.min_new_tokens,
            stop_ids=tuple(sorted(int(t) for t in stops)),
            pad_id=int(self.model_config.pad_token_id or 0),
        )
        args = (
            state,
            arrays["input_ids"],
            arrays["attention_mask"],
            arrays["positions"],
            arrays["rope_deltas"],
            arrays["chunks"],
            arrays["feature_index"],
            self._put(active, ("batch", None)),
            arrays["prompt_seeds"],
            np.int32(seed),
            # Greedy decoding reports log-probs at the given temperature (1 when it is 0).
            np.float32(params.temperature if params.temperature > 0 else 1.0),
            np.float32(params.top_p),
        )
        return static, args, active

    # -- public API ------------------------------------------------------------------------------

    def sample(
        self,
        state: nnx.State | nnx.Module,
        prompts: Prompts,
        samples_per_prompt: int | Sequence[int],
        params: SamplingParams | None = None,
        seed: int = 0,
    ) -> Rollout:
        """Samples `samples_per_prompt` completions of every prompt row (one count for all, or
        one per row; 0 skips a row) in one compiled call.

        state: the model's state (`nnx.split(model)[1]`, any sharding on this sampler's mesh) or
        the model itself. seed: the rollout seed (e.g. the training step); a sample's stream is
        (seed, prompt seed, sample index, step). Returns a Rollout of S = sum(counts) samples,
        ordered by prompt row, then sample index.
        """
        params = params or SamplingParams()
        if isinstance(state, nnx.Module):
            state = nnx.state(state)
        static, args, active = self.prepare(state, prompts, samples_per_prompt, params, seed)
        program = self._program(static, args)
        start = time.perf_counter()
        out = jax.block_until_ready(program(*args))
        self.device_seconds += time.perf_counter() - start
        group = active.shape[1]
        slots = np.flatnonzero(active.reshape(-1)).astype(np.int32)
        # The rollout comes to the host once, whole (this process's rows of it): the rewards, the
        # advantages and the training batch are built there.
        if multihost.count() > 1:
            out = {
                k: multihost.replicated_scalar(v) if v.ndim == 0 else multihost.local_block(v)
                for k, v in out.items()
            }
        else:
            out = jax.device_get(out)
        out = {k: np.asarray(v) if v.ndim == 0 else np.asarray(v)[slots] for k, v in out.items()}
        texts = None
        if self.tokenizer is not None:
            texts = decode_texts(self.tokenizer, out["tokens"], out["lengths"])
        return Rollout(
            tokens=out["tokens"],
            logprobs=out["logprobs"],
            mask=out["mask"],
            lengths=out["lengths"],
            finish_reason=out["finish_reason"],
            sample_to_prompt=slots // group,
            sample_index=slots % group,
            prompt_lengths=out["prompt_lengths"],
            num_steps=out["num_steps"],
            texts=texts,
        )

"""The group sampler (jaxvrl/rollout/sampler.py) on tiny random models, float32.

Greedy decoding equals transformers `generate`; the reported log-probs equal a separate full
forward; samples depend only on (seed, prompt seed, sample index); 8 simulated devices give the
samples of 1; T-GRPO companions come out of the same call; stop tokens, masks and lengths agree;
programs are cached per bucket and counted.

Position ids: transformers 5.23 starts the text after a vision item at start + max(h, w) / merge,
while model/rope.py keeps Qwen's rule (max position + 1). The prompts here keep the two equal:
images always agree; the videos have (t - 1) * interval < max(h, w) / merge, with
interval = 1 for Qwen2-VL and tokens_per_second (2) * second_per_grid_t (0.5) = 1 for Qwen2.5-VL.
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from model_fixtures import tiny_checkpoint, tiny_port
from scipy import stats

from jaxvrl.rollout import group_decode, sampling, vision_chunks
from jaxvrl.rollout.prompt_batch import Prompts
from jaxvrl.rollout.sampler import Rollout, RolloutConfig, Sampler, SamplingParams, decode_rules
from model import parity
from model.hf import load_pretrained
from model.packing import pack_vision
from model.qwen2_vl import Embedded
from model.rope import rope_index

SECONDS_PER_GRID = 0.5
# Prompt rows: text lengths and vision items (kind, grid (t, h, w) in patches).
ROW_A = [4, ("image", (1, 6, 10)), 8]
ROW_B = [3, ("video", (3, 4, 6)), 3]
ROW_C = [6, ("image", (1, 4, 4)), 2, ("video", (2, 4, 6)), 5]
# Shared shapes for the sampled tests: one compiled program serves all of them.
SHARED = RolloutConfig(prompt_row_buckets=(4,), group_buckets=(4,))
PARAMS = SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9, top_k=50)


def make_row(cfg, parts, seed):
    """(token ids, vision items) of one prompt row; text tokens avoid the special ids."""
    rng = np.random.default_rng(seed)
    ids, items = [], []
    for part in parts:
        if isinstance(part, int):
            ids += rng.integers(10, cfg.text.vocab_size, size=part).tolist()
            continue
        kind, grid = part
        patches = rng.standard_normal((int(np.prod(grid)), cfg.vision.patch_dim))
        items.append((kind, grid, patches.astype(np.float32)))
        tok = cfg.image_token_id if kind == "image" else cfg.video_token_id
        # Qwen3-VL: a video's temporal patches in blocks of their own, after 2 timestamp tokens.
        blocks = grid[0] if kind == "video" and cfg.timestamped_videos else 1
        for _ in range(blocks):
            if blocks > 1:
                ids += rng.integers(10, cfg.text.vocab_size, size=2).tolist()
            ids += [cfg.vision_start_token_id] + [tok] * (int(np.prod(grid)) // 4 // blocks)
            ids += [cfg.vision_end_token_id]
    return ids, items


def make_prompts(cfg, rows, seeds=None):
    """Right-padded Prompts for rows given as (ids, items)."""
    length = max(len(ids) for ids, _ in rows)
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros((len(rows), length), bool)
    for r, (row_ids, _) in enumerate(rows):
        ids[r, : len(row_ids)] = row_ids
        mask[r, : len(row_ids)] = True
    items = [item for _, row_items in rows for item in row_items]
    images = [g for kind, g, _ in items if kind == "image"]
    videos = [g for kind, g, _ in items if kind == "video"]
    positions, deltas = rope_index(
        ids, mask, cfg, np.array(images) if images else None,
        np.array(videos) if videos else None, [SECONDS_PER_GRID] * len(videos),
    )  # fmt: skip
    vision = None
    if items:
        vision = pack_vision([p for *_, p in items], np.array([g for _, g, _ in items]), cfg.vision)
    return Prompts(ids, mask, positions, deltas, vision, seeds)


def hf_greedy(torch_model, cfg, row, max_new_tokens):
    """transformers `generate` (greedy) on one unpadded prompt; returns the new tokens."""
    import torch

    ids, items = row
    videos = sum(kind == "video" for kind, _, _ in items)
    kwargs = parity.torch_inputs(cfg, [ids], items, [SECONDS_PER_GRID] * videos)
    input_ids = kwargs["input_ids"]
    with torch.no_grad():
        out = torch_model.generate(
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=cfg.pad_token_id or 0,
            eos_token_id=list(cfg.eos_token_id),
            **kwargs,
        )
    return out[0, len(ids) :].numpy()


@pytest.fixture(scope="module")
def vl():
    """The Qwen2-VL tiny port, its rows and a sampler with the shared buckets."""
    model = tiny_port("qwen2_vl")
    cfg = model.config
    rows = {name: make_row(cfg, parts, i) for i, (name, parts) in enumerate(
        [("A", ROW_A), ("B", ROW_B), ("C", ROW_C)])}  # fmt: skip
    return model, rows, Sampler(model, config=SHARED)


def as_np(out: Rollout) -> dict[str, np.ndarray]:
    """The rollout's arrays, all on the host already (the sampler brings them there at once)."""
    arrays = {k: v for k, v in vars(out).items() if k != "texts"}
    assert all(isinstance(v, np.ndarray) for v in arrays.values()), arrays
    return arrays


def samples_of(out: dict[str, np.ndarray], row: int) -> np.ndarray:
    return out["tokens"][out["sample_to_prompt"] == row]


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_greedy_decoding_matches_transformers_generate(generation):
    model = tiny_port(generation)
    _, torch_model = tiny_checkpoint(generation)
    cfg = model.config
    rows = [make_row(cfg, parts, i) for i, parts in enumerate([ROW_A, ROW_B, ROW_C])]
    assert len({len(ids) for ids, _ in rows}) == 3  # different lengths in one padded batch
    params = SamplingParams(max_new_tokens=10, greedy=True)
    out = as_np(Sampler(model).sample(model, make_prompts(cfg, rows), 1, params))
    for r, row in enumerate(rows):
        expected = hf_greedy(torch_model, cfg, row, params.max_new_tokens)
        got = out["tokens"][r, : out["lengths"][r]]
        np.testing.assert_array_equal(got, expected, err_msg=f"prompt {r}")
        stopped = expected[-1] in cfg.eos_token_id
        assert out["finish_reason"][r] == (
            group_decode.FINISH_STOP if stopped else group_decode.FINISH_LENGTH
        )


@pytest.fixture(scope="module")
def vl3():
    """vl's Qwen3-VL counterpart (DeepStack, q/k norm, interleaved M-RoPE)."""
    model = tiny_port("qwen3_vl")
    cfg = model.config
    rows = {name: make_row(cfg, parts, i) for i, (name, parts) in enumerate(
        [("A", ROW_A), ("B", ROW_B), ("C", ROW_C)])}  # fmt: skip
    return model, rows, Sampler(model, config=SHARED)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_logprobs_equal_a_full_forward_over_the_same_tokens(vl, temperature):
    check_logprobs_equal_a_full_forward(*vl, temperature)


def test_qwen3_logprobs_equal_a_full_forward_over_the_same_tokens(vl3):
    check_logprobs_equal_a_full_forward(*vl3, 0.8)


def test_qwen3_5_logprobs_equal_a_full_forward_over_the_same_tokens():
    """The hybrid decoder's rollout (each prompt's DeltaNet states computed once and copied to
    its samples, then stepped token by token) against one chunked full forward per sample."""
    model = tiny_port("qwen3_5")
    cfg = model.config
    rows = {name: make_row(cfg, parts, i) for i, (name, parts) in enumerate(
        [("A", ROW_A), ("B", ROW_B)])}  # fmt: skip
    check_logprobs_equal_a_full_forward(model, rows, Sampler(model, config=SHARED), 0.8)


def check_logprobs_equal_a_full_forward(model, rows, sampler, temperature):
    cfg = model.config
    prompts = make_prompts(cfg, [rows["A"], rows["B"]])
    params = SamplingParams(max_new_tokens=6, temperature=temperature, top_p=0.9, top_k=50)
    out = as_np(sampler.sample(model, prompts, [4, 3], params, seed=5))
    m = params.max_new_tokens
    # Each sample as one sequence: its prompt's valid tokens, then its completion.
    s = out["tokens"].shape[0]
    n = prompts.lengths[out["sample_to_prompt"]]
    length = int(n.max()) + m
    ids = np.zeros((s, length), np.int64)
    mask = np.zeros((s, length), bool)
    positions = np.zeros((3, s, length), np.int32)
    items = []
    for i, p in enumerate(out["sample_to_prompt"]):
        k = n[i]
        ids[i, :k], ids[i, k : k + m] = prompts.input_ids[p, :k], out["tokens"][i]
        mask[i, : k + m] = True
        positions[:, i, :k] = prompts.positions[:, p, :k]
        # Completion tokens: rope delta + prompt length + index, the same on the three axes.
        positions[:, i, k : k + m] = prompts.rope_deltas[p] + k + np.arange(m)
        items += [rows["A"], rows["B"]][p][1]
    vision = pack_vision([x for *_, x in items], np.array([g for _, g, _ in items]), cfg.vision)

    graphdef, state = nnx.split(model)

    @jax.jit
    def full_logprobs(state, ids, positions, mask, vision, targets, gather, completion):
        m_ = nnx.merge(graphdef, state)
        # A random model can sample a vision pad id: in the completion it is a plain token, so
        # its embedding (and no vision feature or DeepStack addition) goes there.
        x = m_.embed(ids, vision)
        plain = m_.embed(ids)
        if isinstance(x, Embedded):
            x = Embedded(
                x=jnp.where(completion[..., None], plain, x.x),
                deepstack=jnp.where(completion[None, ..., None], 0, x.deepstack),
            )
        else:
            x = jnp.where(completion[..., None], plain, x)
        hidden = m_.hidden_states(x, positions, mask)
        hidden = jnp.take_along_axis(hidden, gather[..., None], axis=1)
        return m_.token_logprobs(hidden, targets, temperature=temperature)

    gather = (n - 1)[:, None] + np.arange(m)[None]
    completion = np.arange(length)[None] >= n[:, None]
    ref = np.asarray(
        full_logprobs(state, ids, positions, mask, vision, out["tokens"], gather, completion)
    )
    valid = out["mask"]
    assert valid.sum() == s * m
    np.testing.assert_allclose(out["logprobs"][valid], ref[valid], rtol=0, atol=1e-5)


def test_the_same_seed_gives_the_same_samples(vl):
    model, rows, sampler = vl
    prompts = make_prompts(model.config, [rows["A"], rows["B"]])
    first = as_np(sampler.sample(model, prompts, [4, 3], PARAMS, seed=0))
    again = as_np(sampler.sample(model, prompts, [4, 3], PARAMS, seed=0))
    other = as_np(sampler.sample(model, prompts, [4, 3], PARAMS, seed=1))
    np.testing.assert_array_equal(first["tokens"], again["tokens"])
    np.testing.assert_array_equal(first["logprobs"], again["logprobs"])
    assert not np.array_equal(first["tokens"], other["tokens"])
    # The samples of one prompt differ from each other (independent streams per sample index).
    assert len({tuple(t) for t in samples_of(first, 0)}) == 4
    assert sampler.num_compilations == 1


def test_a_prompts_samples_do_not_depend_on_the_rest_of_the_batch(vl):
    model, rows, sampler = vl
    cfg = model.config
    alone = as_np(sampler.sample(model, make_prompts(cfg, [rows["A"]], [10]), 4, PARAMS))
    first = as_np(
        sampler.sample(model, make_prompts(cfg, [rows["A"], rows["B"]], [10, 20]), [4, 3], PARAMS)
    )
    second = as_np(
        sampler.sample(model, make_prompts(cfg, [rows["C"], rows["A"]], [30, 10]), [2, 4], PARAMS)
    )
    np.testing.assert_array_equal(samples_of(first, 0), samples_of(alone, 0))
    np.testing.assert_array_equal(samples_of(second, 1), samples_of(alone, 0))


def test_eight_devices_give_the_samples_of_one_device(vl):
    model, rows, sampler = vl
    directory, _ = tiny_checkpoint("qwen2_vl")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = load_pretrained(directory, mesh=mesh)
    prompts = make_prompts(model.config, [rows["A"], rows["B"], rows["C"]], [1, 2, 3])
    expected = as_np(sampler.sample(model, prompts, [4, 3, 2], PARAMS, seed=3))
    sharded_sampler = Sampler(sharded, mesh=mesh, config=SHARED)
    got = as_np(sharded_sampler.sample(sharded, prompts, [4, 3, 2], PARAMS, seed=3))
    (program,) = sharded_sampler._programs.values()
    assert len(program.output_shardings["tokens"].device_set) == 8
    np.testing.assert_array_equal(got["tokens"], expected["tokens"])
    np.testing.assert_array_equal(got["lengths"], expected["lengths"])
    np.testing.assert_allclose(got["logprobs"], expected["logprobs"], rtol=0, atol=1e-5)
    # The decode layout gathers the FSDP shards once, before the decoding loop: inside it the
    # only all-gathers are of activations (vocab-sharded logits), never of a parameter.
    gathered = re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", while_body_hlo(program.as_text()))
    parameter_shapes = {tuple(x.shape) for x in jax.tree.leaves(nnx.state(sharded))}
    assert gathered, "expected the logits gather"
    assert not {tuple(int(d) for d in shape.split(",")) for shape in gathered} & parameter_shapes
    # Off TPU the scanned decoder layers are gathered one layer at a time (a gathered stack made
    # the GPU compiler keep transposed copies of it): among the program's all-gathers, stacked
    # weights' per-layer shards (those FSDP splits), none of the stacks.
    everywhere = re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", program.as_text())
    everywhere = {tuple(int(d) for d in shape.split(",") if d) for shape in everywhere}
    state, shardings = nnx.state(sharded), sharded_sampler.decode_shardings
    stacks, layers = set(), set()
    for x, sharding in zip(
        jax.tree.leaves(state["layers"]), jax.tree.leaves(shardings["layers"]), strict=True
    ):
        if x.ndim > 2:  # a kernel (the norms' scales are not split by FSDP)
            stacks.add(sharding.shard_shape(x.shape))
            spec = PartitionSpec(*tuple(sharding.spec)[1:])
            layers.add(NamedSharding(mesh, spec).shard_shape(x.shape[1:]))
    assert layers & everywhere and not stacks & everywhere


def while_body_hlo(hlo: str) -> str:
    """The text of the computations used as while-loop bodies in an HLO module."""
    bodies = {name for name in _names_after(hlo, "body=")}
    blocks, current, keep = [], [], False
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            name = line.split()[0] if not line.startswith("ENTRY") else "ENTRY"
            keep = name.lstrip("%") in bodies
            current = []
        if keep:
            current.append(line)
        if line.startswith("}") and keep:
            blocks.append("\n".join(current))
            keep = False
    assert blocks, "no while loop body found"
    return "\n".join(blocks)


def _names_after(text: str, marker: str) -> list[str]:
    out = []
    for part in text.split(marker)[1:]:
        out.append(part.split(",")[0].split(")")[0].strip().lstrip("%"))
    return out


def test_tgrpo_companions_are_sampled_in_the_same_call_with_their_own_count(vl):
    model, rows, sampler = vl
    cfg = model.config
    prompts = make_prompts(cfg, [rows["A"], rows["B"]], [10, 20])
    # Shuffle B's video frames: swap its three temporal slices (what the data pipeline does).
    grids = [[g for _, g, _ in rows[k][1]] for k in ("A", "B")]
    shuffled = prompts.vision["patches"].copy()
    start, (t, h, w) = 60, grids[1][0]
    video = shuffled[start : start + t * h * w].reshape(t, h * w, -1)
    shuffled[start : start + t * h * w] = video[[2, 0, 1]].reshape(t * h * w, -1)
    both = prompts.with_companions({**prompts.vision, "patches": shuffled}, [1], grids, cfg.vision)
    assert both.num_prompts == 3 and both.seeds.tolist() == [10, 20, -21]
    out = as_np(sampler.sample(model, both, [4, 4, 2], PARAMS, seed=7))
    assert out["tokens"].shape == (10, PARAMS.max_new_tokens)
    np.testing.assert_array_equal(out["sample_to_prompt"], [0] * 4 + [1] * 4 + [2] * 2)
    np.testing.assert_array_equal(out["sample_index"], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    # The ordered prompts' samples are those of a call without companions ...
    plain = as_np(sampler.sample(model, prompts, [4, 4], PARAMS, seed=7))
    np.testing.assert_array_equal(out["tokens"][:8], plain["tokens"])
    # ... and the companions' are those of the shuffled prompt on its own.
    alone = make_prompts(cfg, [rows["B"]], [-21])
    alone.vision["patches"] = shuffled[start : start + t * h * w]
    companion = as_np(sampler.sample(model, alone, 2, PARAMS, seed=7))
    np.testing.assert_array_equal(out["tokens"][8:], companion["tokens"])
    # Shuffled frames change what the model sees.
    assert not np.array_equal(out["logprobs"][8:], plain["logprobs"][4:6])


def test_first_tokens_through_the_sampler_follow_the_filtered_softmax():
    model = tiny_port("qwen2_vl")
    cfg = model.config
    ids = np.random.default_rng(3).integers(10, cfg.text.vocab_size, size=(1, 12))
    positions, deltas = rope_index(ids, None, cfg)
    prompts = Prompts(ids, np.ones_like(ids), positions, deltas)
    temperature, top_k, top_p = 0.05, 8, 0.8
    n = 4000
    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    out = as_np(Sampler(model).sample(model, prompts, n, params, seed=0))
    logits = np.asarray(model.logits(model(ids, positions, np.ones_like(ids, bool))))[0, -1]
    expected = np.asarray(
        jax.nn.softmax(
            sampling.filter_logits(jnp.asarray(logits[None] / temperature), top_k, top_p)
        )
    )[0].astype(np.float64)
    expected /= expected.sum()
    counts = np.bincount(out["tokens"][:, 0], minlength=logits.size)
    support = expected > 0
    assert 2 <= support.sum() <= top_k, support.sum()  # the filters are doing something
    assert counts[~support].sum() == 0
    assert stats.chisquare(counts[support], n * expected[support]).pvalue > 1e-3
    np.testing.assert_allclose(
        out["logprobs"][:, 0],
        np.asarray(jax.nn.log_softmax(logits / temperature))[out["tokens"][:, 0]],
        rtol=0,
        atol=1e-5,
    )


def test_stop_tokens_end_completions_and_min_new_tokens_suppresses_them(tmp_path):
    from jaxvrl.data.synthetic import make_tokenizer

    model = tiny_port("qwen2_vl")
    cfg = model.config
    tokenizer = make_tokenizer(str(tmp_path))
    ids = np.random.default_rng(4).integers(10, cfg.text.vocab_size, size=(2, 9))
    positions, deltas = rope_index(ids, None, cfg)
    stops = tuple(range(0, cfg.text.vocab_size, 8))  # an eighth of the vocabulary
    params = SamplingParams(max_new_tokens=8, min_new_tokens=2, stop_token_ids=stops)
    sampler = Sampler(model, tokenizer=tokenizer)
    result = sampler.sample(model, Prompts(ids, np.ones_like(ids), positions, deltas), 6, params)
    out = as_np(result)
    m = params.max_new_tokens
    assert (out["lengths"] >= params.min_new_tokens).all() and (out["lengths"] <= m).all()
    np.testing.assert_array_equal(out["mask"], np.arange(m)[None] < out["lengths"][:, None])
    assert not np.isin(out["tokens"][:, : params.min_new_tokens], stops).any()
    for i, length in enumerate(out["lengths"]):
        completion = out["tokens"][i, :length]
        ended = completion[-1] in stops
        assert not np.isin(completion[:-1], stops).any()
        assert out["finish_reason"][i] == (
            group_decode.FINISH_STOP if ended else group_decode.FINISH_LENGTH
        )
        assert (out["tokens"][i, length:] == (cfg.pad_token_id or 0)).all()
        assert (out["logprobs"][i, length:] == 0).all() and (out["logprobs"][i, :length] < 0).all()
        assert result.texts[i] == tokenizer.decode(completion.tolist(), skip_special_tokens=True)
    assert {group_decode.FINISH_STOP, group_decode.FINISH_LENGTH} <= set(
        out["finish_reason"].tolist()
    )
    assert int(out["num_steps"]) == out["lengths"].max()


def test_programs_are_cached_per_bucket_counted_and_logged(caplog):
    model = tiny_port("qwen2_vl")
    cfg = model.config
    sampler = Sampler(model, config=RolloutConfig(prompt_buckets=(16, 32)))
    params = SamplingParams(max_new_tokens=2, stop_token_ids=())

    def run(length):
        ids = np.random.default_rng(length).integers(10, cfg.text.vocab_size, size=(2, length))
        positions, deltas = rope_index(ids, None, cfg)
        return sampler.sample(model, Prompts(ids, np.ones_like(ids), positions, deltas), 2, params)

    with caplog.at_level(logging.INFO, logger="jaxvrl.rollout.sampler"):
        run(5)
        run(16)  # same bucket (16): no new program
        assert sampler.num_compilations == 1
        out = run(20)  # bucket 32
    assert sampler.num_compilations == 2 and sampler.compile_seconds > 0
    assert out.tokens.shape == (4, 2) and (np.asarray(out.lengths) == 2).all()
    messages = [r.getMessage() for r in caplog.records if "compiled program" in r.getMessage()]
    assert (
        len(messages) == 2 and "prompts 2x32" in messages[1] and "max_new_tokens 2" in messages[1]
    )


def test_decode_rules_replicate_embed_and_keep_tensor_parallelism():
    rules = dict(decode_rules())
    assert rules["embed"] is None
    assert rules["mlp"] == rules["heads"] == rules["vocab"] == "tensor"
    assert rules["batch"] == ("data", "fsdp")


def test_left_padded_prompts_are_moved_to_the_right():
    ids = np.array([[0, 0, 7, 8], [5, 6, 7, 8]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    positions = np.broadcast_to(np.array([[0, 0, 0, 1], [0, 1, 2, 3]]), (3, 2, 4))
    prompts = Prompts(ids, mask, positions, np.zeros(2))
    np.testing.assert_array_equal(prompts.input_ids[0], [7, 8, 0, 0])
    np.testing.assert_array_equal(prompts.attention_mask[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(prompts.positions[0, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(prompts.lengths, [2, 4])


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_vision_in_slice_chunks_gives_the_packed_towers_features(generation):
    """Vision attention (and Qwen2.5-VL's windows) stay inside temporal slices, so running whole
    slices as separate chunks, several per chunk, reproduces the packed tower's features."""
    model = tiny_port(generation)
    cfg = model.config
    rows = [make_row(cfg, parts, i) for i, parts in enumerate([ROW_A, ROW_B, ROW_C])]
    prompts = make_prompts(cfg, rows)
    expected = np.asarray(model.visual(prompts.vision))
    chunks, index = vision_chunks.vision_chunks(prompts.vision, cfg.vision, 64, (128, 512))
    assert chunks["patches"].shape[:2] == (8, 64)  # 4 chunks used, 256 patches -> bucket 512
    got = np.asarray(group_decode.vision_features(model, chunks, jnp.asarray(index)))
    n = expected.shape[0]
    np.testing.assert_allclose(got[:n], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("grids", "chunk"),
    [
        ([(2, 16, 32), (8, 16, 32)], 512),  # Video-R1's 224x448 frames: slices of 512 patches
        ([(1, 8, 8), (2, 4, 6)], 256),  # small slices share chunks of at least 256
        ([(1, 40, 40), (1, 8, 8)], 2048),  # past 1024: a multiple of 1024
    ],
)
def test_vision_chunks_fit_the_largest_slice_by_default(grids, chunk):
    cfg = tiny_port("qwen2_vl").config.vision
    patches = [np.zeros((int(np.prod(g)), cfg.patch_dim), np.float32) for g in grids]
    vision = pack_vision(patches, np.asarray(grids), cfg)
    chunks, _ = vision_chunks.vision_chunks(vision, cfg, 0, (1024, 65536))
    assert chunks["patches"].shape[1] == chunk
    total = sum(int(np.prod(g)) for g in grids)
    assert int((np.asarray(chunks["segment_ids"]) > 0).sum()) == total


def test_a_pipeline_batch_with_filler_rows_and_companions_rolls_out(tmp_path):
    """The data pipeline's batch format end to end: Prompts.from_batch with seeds for the real
    rows only, companions of the video rows, filler rows (no items, no samples)."""
    from transformers import AutoTokenizer

    from configs import demo
    from jaxvrl.data import pipeline, synthetic
    from model.config import ModelConfig
    from model.qwen2_vl import Qwen2VL

    config = demo.get_config(str(tmp_path))
    config.data.synthetic.update(num_videos=6, num_images=3, num_eval_videos=0)
    synthetic.ensure_from_config(config)
    config.data.update(num_epochs=1, batch_size=4, shuffle=False, num_workers=0)
    *_, batch = pipeline.build_dataset(config, process_index=0, process_count=1)
    keep = np.asarray(batch["example_mask"])
    real = int(keep.sum())
    assert 0 < real < 4 and batch["is_video"][:real].all()  # the last batch: filler rows
    model = Qwen2VL(ModelConfig.from_pretrained(config.model.path), rngs=nnx.Rngs(0))
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    prompts = Prompts.from_batch(batch, seeds=[11, 12, 13][:real])
    both = prompts.with_companions(
        batch["vision_shuffled"], range(real), batch["meta"]["grid_thw"], model.config.vision
    )
    counts = [4 if k else 0 for k in keep] + [2] * real
    sampler = Sampler(model, tokenizer=tokenizer)
    out = sampler.sample(model, both, counts, SamplingParams(max_new_tokens=4, top_p=0.9))
    expected_rows = [r for r in range(both.num_prompts) for _ in range(counts[r])]
    np.testing.assert_array_equal(np.asarray(out.sample_to_prompt), expected_rows)
    assert len(out.texts) == out.tokens.shape[0] == 4 * real + 2 * real
    assert np.isfinite(np.asarray(out.logprobs)).all() and (np.asarray(out.logprobs) <= 0).all()
    assert both.seeds.tolist()[: real + 1] == [11, 12, 13][:real] + [real]

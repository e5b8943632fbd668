"""Position ids and vision layout against the transformers reference (pinned 5.23).

model/rope.py and model/packing.py compute on the host what transformers computes inside its
forward pass: M-RoPE position ids (`get_rope_index`), vision patch positions, the Qwen2.5-VL window
permutation and the rotary angles. Integer results must be equal; angles agree to float32 rounding.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import vision_utils
from transformers.models.qwen2_5_vl import configuration_qwen2_5_vl, modeling_qwen2_5_vl
from transformers.models.qwen2_vl import configuration_qwen2_vl, modeling_qwen2_vl

from model.config import ModelConfig, VisionConfig
from model.packing import pack_vision, window_layout
from model.rope import mrope_cos_sin, rope_index, vision_cos_sin, vision_patch_positions
from model.tiny import TINY_TOKEN_IDS, tiny_hf_config

GENERATIONS = ("qwen2_vl", "qwen2_5_vl")
IMAGE, VIDEO = TINY_TOKEN_IDS["image_token_id"], TINY_TOKEN_IDS["video_token_id"]
START, END = TINY_TOKEN_IDS["vision_start_token_id"], TINY_TOKEN_IDS["vision_end_token_id"]
PAD = TINY_TOKEN_IDS["pad_token_id"]


@pytest.fixture(scope="module", params=GENERATIONS)
def models(request):
    """(our config, transformers' multimodal base model) of one tiny generation."""
    raw = tiny_hf_config(request.param)
    if request.param == "qwen2_vl":
        reference = modeling_qwen2_vl.Qwen2VLModel(configuration_qwen2_vl.Qwen2VLConfig(**raw))
    else:
        reference = modeling_qwen2_5_vl.Qwen2_5_VLModel(
            configuration_qwen2_5_vl.Qwen2_5_VLConfig(**raw)
        )
    return ModelConfig.from_hf_dict(raw), reference


def text(n: int, seed: int = 0) -> list[int]:
    return list(np.random.default_rng(seed).integers(10, 200, size=n))


def vision(token: int, grid: tuple[int, int, int]) -> list[int]:
    return [START] + [token] * (grid[0] * grid[1] * grid[2] // 4) + [END]


def batch(rows: list[list[int]], left_padded: tuple[int, ...] = ()) -> tuple[np.ndarray, ...]:
    """Pads rows to one length (right, or left for the rows named): ids and mask [batch, seq]."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), PAD, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if b in left_padded else slice(0, len(row))
        ids[b, span] = row
        mask[b, span] = 1
    return ids, mask


def reference_rope_index(reference, ids, mask, images=None, videos=None, seconds=None):
    """transformers' get_rope_index: positions [3, batch, seq] and deltas [batch]."""
    token_type = np.zeros_like(ids)
    token_type[ids == IMAGE] = 1
    token_type[ids == VIDEO] = 2
    kwargs = {}
    if seconds is not None and isinstance(reference, modeling_qwen2_5_vl.Qwen2_5_VLModel):
        kwargs["second_per_grid_ts"] = torch.tensor(seconds)
    positions, deltas = reference.get_rope_index(
        torch.tensor(ids),
        torch.tensor(token_type),
        image_grid_thw=None if images is None else torch.tensor(images),
        video_grid_thw=None if videos is None else torch.tensor(videos),
        attention_mask=torch.tensor(mask),
        **kwargs,
    )
    return positions.numpy(), deltas.numpy().reshape(-1)


def assert_rope_index_matches(models, ids, mask, images=None, videos=None, seconds=None):
    config, reference = models
    ours, our_deltas = rope_index(ids, mask, config, images, videos, seconds)
    expected, expected_deltas = reference_rope_index(reference, ids, mask, images, videos, seconds)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(our_deltas, expected_deltas)


# ------------------------------------------------------------------------------------------------
# rope_index where our rule (max + 1) and transformers 5.23's rule (start + max(h, w) / merge)
# agree: every item's temporal extent is at most its larger spatial side after the merge.


def test_rope_index_matches_transformers_on_text_only(models):
    ids, mask = batch([text(12)])
    assert_rope_index_matches(models, ids, mask)


def test_rope_index_matches_transformers_on_two_images(models):
    images = np.array([[1, 6, 10], [1, 4, 4]])
    row = text(3) + vision(IMAGE, (1, 6, 10)) + text(4, 1) + vision(IMAGE, (1, 4, 4)) + text(5, 2)
    ids, mask = batch([row])
    assert_rope_index_matches(models, ids, mask, images=images)


def test_rope_index_matches_transformers_on_two_videos(models):
    # Qwen2.5-VL: 0.5 s per grid step x 2 tokens/s = interval 1 (ids 0, 1, 2); 0.25 s gives
    # interval 0.5, truncated to ids 0, 0. Qwen2-VL ignores the seconds.
    videos = np.array([[3, 4, 6], [2, 6, 4]])
    row = text(2) + vision(VIDEO, (3, 4, 6)) + text(3, 1) + vision(VIDEO, (2, 6, 4)) + text(4, 2)
    ids, mask = batch([row])
    assert_rope_index_matches(models, ids, mask, videos=videos, seconds=[0.5, 0.25])


def test_rope_index_matches_transformers_on_padded_batch(models):
    # Items are consumed row by row: row 0 holds an image and a video, row 1 (left-padded) a video.
    images = np.array([[1, 6, 10]])
    videos = np.array([[2, 4, 6], [3, 6, 4]])
    row0 = text(4) + vision(IMAGE, (1, 6, 10)) + text(2, 1) + vision(VIDEO, (2, 4, 6)) + text(3, 2)
    row1 = text(3, 3) + vision(VIDEO, (3, 6, 4)) + text(2, 4)
    ids, mask = batch([row0, row1, text(5, 5)], left_padded=(1,))
    assert_rope_index_matches(models, ids, mask, images, videos, seconds=[0.5, 0.5])


# ------------------------------------------------------------------------------------------------
# Where the rules differ, rope_index keeps the released Qwen rule (and vLLM's): the text after a
# vision item starts at the item's maximum position + 1.


def test_rope_index_continues_text_after_longest_axis_of_long_video_qwen2_vl():
    config = ModelConfig.from_hf_dict(tiny_hf_config("qwen2_vl"))
    grid = (8, 4, 4)  # 8 temporal steps, 2 x 2 merged tokens per step
    ids, _ = batch([[20, 21] + vision(VIDEO, grid) + [22]])
    positions, deltas = rope_index(ids, None, config, video_grid_thw=np.array([grid]))

    start = 3  # two text tokens and the vision start token come first
    step = np.repeat(np.arange(8), 4)
    video = np.stack(
        [start + step, start + np.tile([0, 0, 1, 1], 8), start + np.tile([0, 1, 0, 1], 8)]
    )
    text_before = np.broadcast_to(np.arange(3), (3, 3))
    text_after = np.broadcast_to([11, 12], (3, 2))  # max = 3 + 7 = 10; transformers 5.23: 5, 6
    expected = np.concatenate([text_before, video, text_after], axis=1)
    np.testing.assert_array_equal(positions[:, 0], expected)
    assert deltas.tolist() == [13 - 37]  # max position + 1 - tokens


def test_rope_index_spaces_video_time_by_seconds_qwen2_5_vl():
    config = ModelConfig.from_hf_dict(tiny_hf_config("qwen2_5_vl"))
    assert config.vision.tokens_per_second == 2
    grid = (3, 4, 4)
    ids, _ = batch([[20] + vision(VIDEO, grid) + [21]])
    # 1 s per grid step x 2 tokens/s: temporal ids 0, 2, 4 after the offset.
    positions, deltas = rope_index(ids, None, config, None, np.array([grid]), [1.0])

    start = 2
    video = np.stack(
        [
            start + np.repeat([0, 2, 4], 4),
            start + np.tile([0, 0, 1, 1], 3),
            start + np.tile([0, 1, 0, 1], 3),
        ]
    )
    text_before = np.broadcast_to(np.arange(2), (3, 2))
    text_after = np.broadcast_to([7, 8], (3, 2))  # max = 2 + 4 = 6; transformers 5.23: 4, 5
    expected = np.concatenate([text_before, video, text_after], axis=1)
    np.testing.assert_array_equal(positions[:, 0], expected)
    assert deltas.tolist() == [9 - 16]


# ------------------------------------------------------------------------------------------------
# Vision layout.

GRIDS = [
    [[1, 6, 10]],  # one non-square image
    [[3, 4, 6], [1, 2, 2]],  # a video and an image smaller than a window
    [[2, 8, 8], [1, 10, 6], [4, 6, 14]],  # divisible and non-divisible by the window, t > 1
]


@pytest.mark.parametrize("grids", GRIDS)
def test_vision_patch_positions_match_transformers(grids):
    expected = vision_utils.get_vision_position_ids(torch.tensor(grids), 2)
    np.testing.assert_array_equal(vision_patch_positions(np.array(grids), 2), expected.numpy())


@pytest.mark.parametrize("grids", GRIDS)
def test_segment_ids_match_transformers_cu_seqlens(grids):
    # Block-diagonal vision attention: one segment per temporal slice of each item.
    config = VisionConfig(generation="qwen2_vl", patch_size=14, in_channels=1)
    total = int(np.prod(grids, axis=1).sum())
    packed = pack_vision(np.zeros((total, config.patch_dim), np.float32), np.array(grids), config)
    expected = vision_utils.get_vision_cu_seqlens(torch.tensor(grids)).numpy()
    _, counts = np.unique(packed["segment_ids"], return_counts=True)
    np.testing.assert_array_equal(np.concatenate([[0], np.cumsum(counts)]), expected)


def windowed_config(window_size: int) -> VisionConfig:
    return VisionConfig(generation="qwen2_5_vl", window_size=window_size, patch_size=14)


@pytest.mark.parametrize("window_size", [56, 112])
@pytest.mark.parametrize("grids", GRIDS)
def test_window_permutation_matches_transformers_window_index(grids, window_size):
    config = windowed_config(window_size)
    perm, _ = window_layout(np.array(grids), config)
    expected, _ = vision_utils.get_vision_window_index(torch.tensor(grids), 2, window_size, 14)
    np.testing.assert_array_equal(perm, expected.numpy())


@pytest.mark.parametrize("window_size", [56, 112])
@pytest.mark.parametrize("grids", GRIDS)
def test_window_ids_match_transformers_window_boundaries(grids, window_size):
    # In window order every window is one contiguous run of ids, and the runs end where
    # transformers' cu_window_seqlens (in patches) say windows end.
    config = windowed_config(window_size)
    perm, unit_windows = window_layout(np.array(grids), config)
    ordered = unit_windows[perm]
    assert np.all(np.diff(ordered) >= 0)
    _, units = np.unique(ordered, return_counts=True)
    _, expected = vision_utils.get_vision_window_index(torch.tensor(grids), 2, window_size, 14)
    np.testing.assert_array_equal(
        np.concatenate([[0], np.cumsum(units) * config.merge_unit]), expected.numpy()
    )


# ------------------------------------------------------------------------------------------------
# Rotary angles, at the 7B models' sizes.


@pytest.mark.parametrize("generation", GENERATIONS)
def test_mrope_cos_sin_match_transformers(generation):
    modeling, configuration = {
        "qwen2_vl": (modeling_qwen2_vl.Qwen2VLRotaryEmbedding, configuration_qwen2_vl),
        "qwen2_5_vl": (modeling_qwen2_5_vl.Qwen2_5_VLRotaryEmbedding, configuration_qwen2_5_vl),
    }[generation]
    text_config_class = getattr(
        configuration, "Qwen2VLTextConfig" if generation == "qwen2_vl" else "Qwen2_5_VLTextConfig"
    )
    rope = {"rope_type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
    reference = modeling(
        text_config_class(hidden_size=3584, num_attention_heads=28, rope_parameters=rope)
    )
    positions = np.random.default_rng(0).integers(0, 32768, size=(3, 2, 64))
    cos, sin = reference(torch.zeros(1), torch.tensor(positions))
    our_cos, our_sin = mrope_cos_sin(jnp.asarray(positions), 128, 1e6, (16, 24, 24))
    # NumPy's and PyTorch's float32 inverse frequencies differ by up to 2 ulps (relative 2.4e-7),
    # so an angle at position p may differ by p x 2.4e-7 plus its own rounding; cos and sin are
    # 1-Lipschitz. Tolerance per token: 4e-7 x its largest position id + 1e-6.
    tolerance = 4e-7 * positions.max(axis=0)[..., None] + 1e-6
    assert np.all(np.abs(np.asarray(our_cos) - cos.numpy()) <= tolerance)
    assert np.all(np.abs(np.asarray(our_sin) - sin.numpy()) <= tolerance)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_vision_cos_sin_match_transformers(generation):
    if generation == "qwen2_vl":
        config = configuration_qwen2_vl.Qwen2VLVisionConfig(embed_dim=1280, num_heads=16)
        reference = modeling_qwen2_vl.Qwen2VLVisionRotaryEmbedding(config)
    else:
        config = configuration_qwen2_5_vl.Qwen2_5_VLVisionConfig(hidden_size=1280, num_heads=16)
        reference = modeling_qwen2_5_vl.Qwen2_5_VLVisionRotaryEmbedding(config)
    pos_hw = np.random.default_rng(1).integers(0, 256, size=(500, 2))
    cos, sin = reference(torch.zeros(1), torch.tensor(pos_hw))
    our_cos, our_sin = vision_cos_sin(jnp.asarray(pos_hw), 80, 10000.0)
    # As for M-RoPE: float32 inverse frequencies may differ by ulps; positions are below 256.
    tolerance = 4e-7 * pos_hw.max(axis=1)[:, None] + 1e-6
    assert np.all(np.abs(np.asarray(our_cos) - cos.numpy()) <= tolerance)
    assert np.all(np.abs(np.asarray(our_sin) - sin.numpy()) <= tolerance)

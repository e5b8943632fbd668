"""Frame counts, frame indices, resized sizes (hand-computed at Video-R1's settings), pixel
normalisation and patch order against the transformers processor."""

import numpy as np
import pytest
import torch
from PIL import Image

from jaxvrl.data import vision_inputs as vi

VIDEO_PIXELS = 128 * 28 * 28  # Video-R1 training: min = max = 100352 pixels per frame
IMAGE_MIN, IMAGE_MAX = 4 * 28 * 28, 256 * 28 * 28
SPEC = vi.VisionSpec()


def video_frames(total, fps):
    return vi.num_video_frames(total, fps, fps=2.0, min_frames=4, max_frames=16, frame_factor=2)


# ------------------------------------------------------------------------------------------------
# Frame counts and indices.


def test_short_video_is_raised_to_the_minimum_frame_count():
    # 1.5 s at 10 fps: 15 frames, 3 at 2 fps -> raised to 4; linspace(0, 14, 4) = 0, 4.67, 9.33, 14
    assert video_frames(15, 10.0) == 4
    np.testing.assert_array_equal(vi.frame_indices(15, 4), [0, 5, 9, 14])


def test_video_with_fewer_frames_than_the_minimum_uses_what_it_has():
    # 3 frames: the minimum 4 is capped at the frames available, floored to even -> 2
    assert video_frames(3, 30.0) == 2
    np.testing.assert_array_equal(vi.frame_indices(3, 2), [0, 2])


def test_odd_frame_count_is_floored_to_even():
    # 3.5 s at 10 fps -> 7 frames -> 6; linspace(0, 34, 6) = 0, 6.8, 13.6, 20.4, 27.2, 34
    assert video_frames(35, 10.0) == 6
    np.testing.assert_array_equal(vi.frame_indices(35, 6), [0, 7, 14, 20, 27, 34])


def test_medium_video_samples_two_frames_per_second():
    # 5 s at 25 fps -> 10 frames; step 124/9 = 13.78
    assert video_frames(125, 25.0) == 10
    np.testing.assert_array_equal(
        vi.frame_indices(125, 10), [0, 14, 28, 41, 55, 69, 83, 96, 110, 124]
    )


def test_long_video_is_capped_at_the_maximum_frame_count():
    # 60 s at 30 fps -> 120 frames at 2 fps -> 16; index k = round(k * 1799 / 15)
    assert video_frames(1800, 30.0) == 16
    expected = [0, 120, 240, 360, 480, 600, 720, 840, 959, 1079, 1199, 1319, 1439, 1559, 1679]
    np.testing.assert_array_equal(vi.frame_indices(1800, 16), expected + [1799])


def test_a_single_frame_video_is_rejected():
    with pytest.raises(ValueError, match="fewer than 2"):
        video_frames(1, 25.0)


# ------------------------------------------------------------------------------------------------
# Sizes.


def test_landscape_video_frame_is_scaled_up_to_the_pixel_budget():
    # 240 x 320 rounds to 252 x 308 = 77616 < 100352; beta = sqrt(100352 / 76800) = 1.1431;
    # ceil(9.80) * 28 = 280, ceil(13.06) * 28 = 392
    assert vi.smart_resize(240, 320, 28, VIDEO_PIXELS, VIDEO_PIXELS) == (280, 392)


def test_portrait_video_frame_is_scaled_down_to_the_pixel_budget():
    # 480 x 270 rounds to 476 x 280 = 133280 > 100352; beta = sqrt(129600 / 100352) = 1.1364;
    # floor(15.08) * 28 = 420, floor(8.49) * 28 = 224
    assert vi.smart_resize(480, 270, 28, VIDEO_PIXELS, VIDEO_PIXELS) == (420, 224)


def test_odd_sized_video_frame():
    # 333 x 501 rounds to 336 x 504; beta = sqrt(166833 / 100352) = 1.2894;
    # floor(9.22) * 28 = 252, floor(13.88) * 28 = 364
    assert vi.smart_resize(333, 501, 28, VIDEO_PIXELS, VIDEO_PIXELS) == (252, 364)


def test_large_image_is_scaled_into_the_image_budget():
    # 800 x 1000 rounds to 812 x 1008 > 200704; beta = sqrt(800000 / 200704) = 1.9965;
    # floor(14.31) * 28 = 392, floor(17.89) * 28 = 476
    assert vi.smart_resize(800, 1000, 28, IMAGE_MIN, IMAGE_MAX) == (392, 476)


def test_tiny_image_is_scaled_up_to_the_minimum():
    # 20 x 30 rounds to 28 x 28 = 784 < 3136; beta = sqrt(3136 / 600) = 2.2862;
    # ceil(1.63) * 28 = 56, ceil(2.45) * 28 = 84
    assert vi.smart_resize(20, 30, 28, IMAGE_MIN, IMAGE_MAX) == (56, 84)


def test_image_within_budget_is_only_rounded():
    # 300 x 200: 308 x 196 = 60368 within [3136, 200704]
    assert vi.smart_resize(300, 200, 28, IMAGE_MIN, IMAGE_MAX) == (308, 196)


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(ValueError, match="aspect ratio"):
        vi.smart_resize(10, 2500, 28, IMAGE_MIN, IMAGE_MAX)


def test_total_pixel_cap_shares_the_budget_across_frames_but_never_below_min():
    # 16 frames, 400000 pixels in total: share 400000 / 16 * 2 = 50000 < 1.05 * min = 105369
    cap = vi.video_frame_max_pixels(16, VIDEO_PIXELS, 2 * VIDEO_PIXELS, 400000, 2, 1.05)
    assert cap == 105369
    # a generous total leaves the per-frame maximum in charge
    assert vi.video_frame_max_pixels(16, VIDEO_PIXELS, VIDEO_PIXELS, 10**9, 2) == VIDEO_PIXELS
    # a tight total scales frames down: share 16 * 784 * 16 / 16 * 2 = 25088 -> 32 tokens a frame
    share = vi.video_frame_max_pixels(16, 16 * 784, 128 * 784, 16 * 784 * 16, 2)
    assert share == 32 * 784


def test_fixed_frame_size_is_rounded_to_the_factor():
    # SEED-Bench-R1 resizes every frame to 256 x 256, which rounds to 252 x 252
    size = vi.video_frame_size(
        720,
        1280,
        16,
        SPEC,
        min_pixels=VIDEO_PIXELS,
        max_pixels=VIDEO_PIXELS,
        total_pixels=10**9,
        resized_height=256,
        resized_width=256,
    )
    assert size == (252, 252)


# ------------------------------------------------------------------------------------------------
# Pixels and patches.


def torch_resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """torchvision's `resize(uint8 video, BICUBIC, antialias=True)`: float32 interpolate, clamp
    to [0, 255], round, uint8 (torchvision transforms/_functional_tensor.py `resize`)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = torch.nn.functional.interpolate(
        x, (h, w), mode="bicubic", antialias=True, align_corners=False
    )
    return torch.round(y.clamp(0, 255)).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sharp_frames(seed: int, t: int, h: int, w: int) -> dict[str, np.ndarray]:
    """Text-like content: black/white pixels, black/white 8-pixel blocks, uniform noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (t, h // 8 + 1, w // 8 + 1, 1)) * 255
    return {
        "binary": (rng.random((t, h, w, 3)) > 0.5).astype(np.uint8) * 255,
        "blocks": np.kron(blocks, np.ones((1, 8, 8, 3)))[:, :h, :w].astype(np.uint8),
        "noise": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
    }


@pytest.mark.parametrize(
    "source, target", [((120, 160), (56, 84)), ((90, 160), (252, 448)), ((64, 96), (140, 196))]
)
def test_video_resize_is_within_one_level_of_torchvision_antialiased_bicubic(source, target):
    # Shrinking by 2.1 and 1.9, enlarging by 2.8 and 2.2; float32 sums in another order than
    # torch's round differently only next to a .5, so one level is the tolerance.
    for name, frames in sharp_frames(0, 2, *source).items():
        diff = np.abs(vi.resize_frames(frames, *target).astype(int) - torch_resize(frames, *target))
        assert diff.max() <= 1, name
        assert (diff > 0).mean() < 0.01, name


def test_pillow_bicubic_is_far_from_torchvision_on_sharp_content():
    # Why videos do not use Pillow: it rounds and clamps between its two passes.
    frames = sharp_frames(1, 1, 120, 160)["binary"]
    diff = np.abs(vi.resize_images(frames, 56, 84).astype(int) - torch_resize(frames, 56, 84))
    assert diff.max() > 3


def test_resize_weights_rows_sum_to_one_and_same_size_is_identity():
    for n_in, n_out in ((10, 3), (3, 10), (7, 7)):
        weights = vi.antialiased_bicubic_weights(n_in, n_out).toarray()
        np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(vi.antialiased_bicubic_weights(5, 5).toarray(), np.eye(5))
    frames = sharp_frames(2, 1, 28, 56)["noise"]
    np.testing.assert_array_equal(vi.resize_frames(frames, 28, 56), frames)


def test_image_patches_match_the_transformers_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    image = np.random.default_rng(1).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessorPil()(
        images=[Image.fromarray(image)], do_resize=False, return_tensors="np"
    )
    ours = vi.vision_input(image[None], "image", SPEC)
    assert ours.grid_thw == (1, 4, 6)
    np.testing.assert_array_equal(ref["image_grid_thw"], [[1, 4, 6]])
    np.testing.assert_allclose(ours.patches, ref["pixel_values"], atol=1e-5)


def reference_video_patches(frames: np.ndarray, spec: vi.VisionSpec) -> np.ndarray:
    """The processor's patch order written as loops: temporal patch, then 2x2 merge windows in
    row-major order, then the 4 patches of a window row-major; each patch flattened as
    (channel, frame, row, column). frames: normalised [T, C, H, W] with T even."""
    p, m, tp = spec.patch_size, spec.spatial_merge_size, spec.temporal_patch_size
    t, _, h, w = frames.shape
    out = []
    for gt in range(t // tp):
        for by in range(h // p // m):
            for bx in range(w // p // m):
                for my in range(m):
                    for mx in range(m):
                        y, x = (by * m + my) * p, (bx * m + mx) * p
                        block = frames[gt * tp : (gt + 1) * tp, :, y : y + p, x : x + p]
                        out.append(block.transpose(1, 0, 2, 3).reshape(-1))
    return np.stack(out)


def test_video_patches_follow_the_processor_order_and_pad_the_last_frame():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 56, 112, 3), dtype=np.uint8)  # odd count: pad to 4
    item = vi.vision_input(frames, "video", SPEC, sample_fps=2.0)
    assert item.grid_thw == (2, 4, 8)
    assert item.second_per_grid_t == 1.0  # temporal_patch_size / sample fps = 2 / 2
    padded = np.concatenate([frames, frames[-1:]])
    expected = reference_video_patches(vi.normalize(padded).transpose(0, 3, 1, 2), SPEC)
    np.testing.assert_array_equal(item.patches, expected)


def test_normalisation_is_clip_mean_std_after_dividing_by_255():
    frame = np.full((1, 2, 2, 3), 255, np.uint8)
    x = vi.normalize(frame)
    assert x.shape == (1, 2, 2, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], (1.0 - vi.CLIP_MEAN) / vi.CLIP_STD, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# T-GRPO shuffling.


def test_tubelet_shuffle_permutes_whole_temporal_patches():
    frames = np.random.default_rng(3).integers(0, 256, (8, 56, 56, 3), dtype=np.uint8)
    item = vi.vision_input(frames, "video", SPEC, 2.0)
    out = vi.shuffled_patches(item, "tubelet", SPEC, np.random.default_rng(0))
    blocks = item.patches.reshape(4, 16, -1)
    shuffled = out.reshape(4, 16, -1)
    order = [next(j for j in range(4) if np.array_equal(shuffled[i], blocks[j])) for i in range(4)]
    assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]


def test_frame_shuffle_equals_patchifying_the_permuted_frames_and_is_reproducible():
    frames = np.random.default_rng(4).integers(0, 256, (6, 56, 84, 3), dtype=np.uint8)
    item = vi.vision_input(frames, "video", SPEC, 2.0)
    a = vi.shuffled_patches(item, "frame", SPEC, np.random.default_rng(7))
    b = vi.shuffled_patches(item, "frame", SPEC, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    perm = vi.shuffle_permutation(6, np.random.default_rng(7))
    np.testing.assert_array_equal(a, vi.patchify(vi.normalize(frames[perm]), SPEC)[0])
    assert not np.array_equal(a, item.patches)


def test_shuffle_permutation_is_never_the_identity():
    rng = np.random.default_rng(0)
    for n in (2, 3, 8):
        for _ in range(50):
            assert not np.array_equal(vi.shuffle_permutation(n, rng), np.arange(n))


# ------------------------------------------------------------------------------------------------
# Qwen3-VL: its video processor's frame count, sizes, normalisation and patch order.

QWEN3 = vi.VisionSpec(patch_size=16, family="qwen3_vl")


@pytest.mark.parametrize(
    "total, fps", [(30, 10.0), (7, 30.0), (3, 30.0), (301, 29.97), (2000, 25.0), (45, 24.0)]
)
def test_qwen3_frame_count_and_indices_match_the_transformers_video_processor(total, fps):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = Qwen3VLVideoProcessor(min_frames=4, max_frames=64)
    metadata = VideoMetadata(total_num_frames=total, fps=fps, width=64, height=64)
    expected = processor.sample_frames(metadata, fps=2.0)
    n = vi.qwen3_num_video_frames(total, fps, 2.0, 4, 64)
    np.testing.assert_array_equal(vi.frame_indices(total, n), expected)


@pytest.mark.parametrize(
    "frames, height, width",
    [(16, 720, 1280), (5, 480, 640), (64, 1080, 1920), (4, 20, 300), (2, 64, 64), (31, 360, 202)],
)
def test_qwen3_frame_size_matches_the_transformers_video_processor_with_the_per_frame_cap(
    frames, height, width, monkeypatch
):
    """transformers' own resize (its budget arithmetic and smart_resize) with the pixel
    resampling stubbed out (it needs torchvision): the size it asks for is ours."""
    import torch
    from transformers.image_utils import SizeDict
    from transformers.models.qwen3_vl import video_processing_qwen3_vl as qwen3
    from transformers.video_processing_utils import BaseVideoProcessor

    asked = {}
    monkeypatch.setattr(
        BaseVideoProcessor, "resize", lambda self, image, size, **kw: asked.update(size=size)
    )
    processor = qwen3.Qwen3VLVideoProcessor(max_video_tokens=256)
    budget = dict(shortest_edge=64 * 32 * 32, longest_edge=16 * 256 * 32 * 32 // 2)
    processor.resize(
        torch.zeros((1, frames, 3, height, width), dtype=torch.uint8),
        size=SizeDict(**budget),
        resample=None,
        factor=32,
        temporal_factor=2,
        cap_pixels_per_frame=True,
    )
    ours = vi.qwen3_video_frame_size(
        height,
        width,
        frames,
        QWEN3,
        min_pixels=budget["shortest_edge"],
        max_pixels=256 * 32 * 32,
        total_pixels=budget["longest_edge"],
    )
    assert ours == (asked["size"].height, asked["size"].width)


def test_qwen3_video_pixels_match_the_transformers_video_processor():
    """Normalisation (mean and std 0.5), temporal padding (an odd frame count) and patch order
    of transformers' Qwen3VLVideoProcessor, fed frames already at their size. Its rescale and
    normalise need torchvision, so they are applied here with the processor's own mean, std
    and rescale factor; the patch order is the processor's own (patchify)."""
    import torch
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    processor = Qwen3VLVideoProcessor()
    frames = np.random.default_rng(3).integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)
    mean = torch.tensor(processor.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 1, 3, 1, 1)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float()
    video = (video * processor.rescale_factor - mean) / std
    expected, t, h, w = processor.patchify(video, 16, 2, 2)
    item = vi.vision_input(frames, "video", QWEN3, sample_fps=2.0)
    assert item.grid_thw == (t, h, w) == (3, 4, 6)
    np.testing.assert_allclose(item.patches, expected[0].numpy(), atol=1e-6)


def test_qwen3_timestamps_match_the_transformers_processor():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    indices = np.array([0, 6, 12, 17, 23, 29, 35])  # odd: the last frame is repeated
    expected = Qwen3VLProcessor._calculate_timestamps(None, indices, 12.0, 2)
    item = vi.vision_input(
        np.zeros((7, 32, 32, 3), np.uint8), "video", QWEN3, sample_fps=2.0, times=indices / 12.0
    )
    np.testing.assert_allclose(item.timestamps, expected, rtol=1e-12)
    assert len(item.timestamps) == item.grid_thw[0] == 4

"""From decoded frames to the vision tower's inputs: frame counts and indices, `smart_resize`,
resizing, CLIP normalisation, temporal padding and patch flattening in the processor's order.

Everything here is host-side NumPy/SciPy/Pillow and matches qwen-vl-utils (as used by Video-R1)
and the transformers Qwen2-VL image/video processors; every limit is an argument (the config's
`data` fields), none is a constant.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import scipy.sparse
from PIL import Image

# OpenAI CLIP normalisation, the one Qwen2-VL's processors use.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# Qwen3-VL's processors: mean and std 0.5 on every channel (transformers IMAGENET_STANDARD_*).
HALF = np.array([0.5, 0.5, 0.5], np.float32)


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """The vision tower's geometry (from ModelConfig.vision) and its processors' family:
    "qwen3_vl" samples and sizes videos as Qwen3-VL's video processor does and normalises with
    mean and std 0.5; the Qwen2 families follow qwen-vl-utils with CLIP's mean and std."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    family: str = "qwen2_vl"

    @classmethod
    def of(cls, vision) -> VisionSpec:
        """The spec of a model.config.VisionConfig."""
        return cls(
            vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size,
            vision.generation,
        )  # fmt: skip

    @property
    def factor(self) -> int:
        """Side of one merged token in pixels: resized sizes are multiples of it."""
        return self.patch_size * self.spatial_merge_size

    @property
    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        return (HALF, HALF) if self.family == "qwen3_vl" else (CLIP_MEAN, CLIP_STD)


@dataclasses.dataclass(frozen=True)
class VisionInput:
    """One image or video, ready for `model.packing.pack_vision`.

    patches: [t*h*w, channels*temporal_patch*patch*patch] float32 in merge-window order.
    grid_thw: (t, h, w) in patches. second_per_grid_t: seconds covered by one temporal patch
    (temporal_patch_size / sample fps; 1.0 for images).
    """

    kind: str  # "image" or "video"
    patches: np.ndarray
    grid_thw: tuple[int, int, int]
    second_per_grid_t: float = 1.0
    # Videos: the mean time in seconds of each temporal patch's frames (Qwen3-VL writes it
    # before the patch's tokens); empty for images.
    timestamps: tuple[float, ...] = ()

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w


# ------------------------------------------------------------------------------------------------
# Sizes and frame counts.


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 4 * 28 * 28,
    max_pixels: int = 16384 * 28 * 28,
    max_aspect_ratio: float = 200.0,
) -> tuple[int, int]:
    """Height and width rounded to multiples of `factor`, scaled into [min_pixels, max_pixels]
    keeping the aspect ratio (qwen-vl-utils `smart_resize`). Scaling up uses ceil, scaling down
    floor, so a result can overshoot max_pixels only when min_pixels forces it."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > max_aspect_ratio:
        raise ValueError(
            f"aspect ratio {max(height, width) / min(height, width):.1f} of a {height}x{width} "
            f"image exceeds {max_aspect_ratio}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def num_video_frames(
    total_frames: int,
    video_fps: float,
    fps: float,
    min_frames: int,
    max_frames: int,
    frame_factor: int = 2,
) -> int:
    """Frames to sample (qwen-vl-utils `smart_nframes`): duration * fps, clamped to
    [min_frames, max_frames] and to the frames the video has, floored to a multiple of
    `frame_factor`. Raises ValueError when the video has fewer than `frame_factor` frames."""
    if total_frames < frame_factor:
        raise ValueError(f"video has {total_frames} frames, fewer than {frame_factor}")
    if not video_fps > 0:
        raise ValueError(f"video reports a frame rate of {video_fps}")
    lo = math.ceil(min_frames / frame_factor) * frame_factor
    hi = math.floor(min(max_frames, total_frames) / frame_factor) * frame_factor
    n = total_frames / video_fps * fps
    n = min(max(n, lo), hi, total_frames)
    return max(frame_factor, math.floor(n / frame_factor) * frame_factor)


def qwen3_num_video_frames(
    total_frames: int, video_fps: float, fps: float, min_frames: int, max_frames: int
) -> int:
    """Frames to sample (transformers' Qwen3VLVideoProcessor.sample_frames): int(duration *
    fps), raised to min_frames, capped at max_frames and at the frames the video has. Not
    rounded to the temporal patch: patchify repeats the last frame."""
    if total_frames < 1:
        raise ValueError("video has no frames")
    if not video_fps > 0:
        raise ValueError(f"video reports a frame rate of {video_fps}")
    n = int(total_frames / video_fps * fps)
    return min(max(n, min_frames), max_frames, total_frames)


def qwen3_video_frame_size(
    height: int,
    width: int,
    num_frames: int,
    spec: VisionSpec,
    *,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int,
    min_pixels_slack: float = 1.05,
) -> tuple[int, int]:
    """Resized (height, width) of a video's frames (transformers' Qwen3VLVideoProcessor.resize
    with cap_pixels_per_frame, the reference behaviour of qwen-vl-utils): a per-frame budget
    max(min(max_pixels, total_pixels // frames), int(min_pixels * slack)), then the video
    smart_resize over all frames (frames rounded to the temporal patch) between min_pixels and
    frames x budget. Sides under the factor are first scaled up to it."""
    tp, factor = spec.temporal_patch_size, spec.factor
    if num_frames < tp:
        raise ValueError(f"video has {num_frames} frames, fewer than {tp}")
    per_frame = max(min(max_pixels, total_pixels // num_frames), int(min_pixels * min_pixels_slack))
    budget = per_frame * num_frames
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {height}x{width} video exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / tp) * tp
    if t_bar * h_bar * w_bar > budget:
        beta = math.sqrt(num_frames * height * width / budget)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patch_timestamps(times: np.ndarray, temporal_patch_size: int) -> tuple[float, ...]:
    """Qwen3-VL's timestamp of each temporal patch (transformers' Qwen3VLProcessor
    `_calculate_timestamps`): the frames' times padded with the last to a multiple of the
    temporal patch, then the mean of each patch's first and last frame time, in seconds."""
    times = np.asarray(times, np.float64)
    times = np.concatenate([times, np.repeat(times[-1:], -len(times) % temporal_patch_size)])
    groups = times.reshape(-1, temporal_patch_size)
    return tuple(float(t) for t in (groups[:, 0] + groups[:, -1]) / 2)


def frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Uniform indices `linspace(0, total_frames - 1, num_frames).round()` (half to even, as
    torch.round): [num_frames] int64."""
    return np.round(np.linspace(0, total_frames - 1, num_frames)).astype(np.int64)


def video_frame_max_pixels(
    num_frames: int,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int,
    frame_factor: int = 2,
    min_pixels_slack: float = 1.05,
) -> int:
    """Per-frame pixel cap of a video (qwen-vl-utils `fetch_video`): an even share of the
    total-pixel budget per temporal patch, never below min_pixels * slack, never above
    max_pixels."""
    share = total_pixels / num_frames * frame_factor
    return int(min(max_pixels, max(min(max_pixels, share), int(min_pixels * min_pixels_slack))))


def video_frame_size(
    height: int,
    width: int,
    num_frames: int,
    spec: VisionSpec,
    *,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int,
    frame_factor: int = 2,
    min_pixels_slack: float = 1.05,
    resized_height: int = 0,
    resized_width: int = 0,
    max_aspect_ratio: float = 200.0,
) -> tuple[int, int]:
    """Resized (height, width) of every frame of a video: a fixed size when `resized_height`
    and `resized_width` are set (rounded to multiples of the factor), else `smart_resize` within
    the per-frame budget."""
    if resized_height and resized_width:
        return smart_resize(
            resized_height, resized_width, spec.factor, 0, 1 << 62, max_aspect_ratio
        )
    cap = video_frame_max_pixels(
        num_frames, min_pixels, max_pixels, total_pixels, frame_factor, min_pixels_slack
    )
    return smart_resize(height, width, spec.factor, min_pixels, cap, max_aspect_ratio)


# ------------------------------------------------------------------------------------------------
# Pixels.


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The cubic convolution kernel with a = -0.5 (torch's and Pillow's antialiased bicubic)."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=128)
def antialiased_bicubic_weights(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
    """[n_out, n_in] float32 weights of torch's antialiased bicubic along one axis
    (`interpolate(mode="bicubic", antialias=True, align_corners=False)`): output i is centred
    at scale * (i + 0.5) (scale = n_in / n_out); when shrinking, the kernel's support (2 input
    pixels) and argument are scaled by `scale`; taps outside the image are dropped and the rest
    normalised to sum 1."""
    scale = n_in / n_out
    support, stretch = (2.0 * scale, 1.0 / scale) if scale >= 1.0 else (2.0, 1.0)
    rows, cols, values = [], [], []
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C++ does
        hi = min(int(center + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        w = _bicubic((taps - center + 0.5) * stretch)
        total = w.sum()
        rows.append(np.full(len(taps), i))
        cols.append(taps)
        values.append(w / total if total != 0 else w)
    return scipy.sparse.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_out, n_in),
    )


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes uint8 video frames [T, H, W, 3] to [T, height, width, 3] as qwen-vl-utils does:
    torchvision `resize(video, [h, w], BICUBIC, antialias=True)` on the decoded uint8 tensor,
    which computes in float32, clamps to [0, 255] and rounds back to uint8
    (qwen-vl-utils vision_process.py `fetch_video`; Video-R1 src/qwen-vl-utils/src/qwen_vl_utils/
    vision_process.py:310-315).

    Two separable float32 passes with `antialiased_bicubic_weights` (height, then width): equal
    to torch's result or one grey level apart where float32 sums land near a .5 (at most 1
    level on sharp binary and noise content, about 0.1% of values; tests/
    test_data_vision_inputs.py). About as fast as Pillow (bench/RESULTS.md).
    """
    frames = np.asarray(frames, np.uint8)
    t, h_in, w_in, c = frames.shape
    if (h_in, w_in) == (height, width):
        return frames  # the weights are then the identity
    rows = antialiased_bicubic_weights(h_in, height)
    tall = np.empty((t, height, w_in * c), np.float32)
    for i in range(t):
        tall[i] = rows @ frames[i].reshape(h_in, w_in * c).astype(np.float32)
    by_column = tall.reshape(t, height, w_in, c).transpose(2, 0, 1, 3).reshape(w_in, -1)
    out = antialiased_bicubic_weights(w_in, width) @ by_column  # [width, t * height * c]
    out = out.reshape(width, t, height, c).transpose(1, 2, 0, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_images(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes uint8 images [T, H, W, 3] to [T, height, width, 3] with Pillow bicubic, as
    qwen-vl-utils' `fetch_image` does (`image.resize((w, h))`, Pillow's default BICUBIC) for
    images and for the frames of a video given as image files."""
    frames = np.asarray(frames, np.uint8)
    if frames.shape[1:3] == (height, width):
        return frames
    out = np.empty((frames.shape[0], height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC)
        out[i] = np.asarray(image)
    return out


def normalize(frames: np.ndarray, spec: VisionSpec = VisionSpec()) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, H, W, 3]: /255, then the family's mean/std
    (VisionSpec.mean_std), as one multiply and one add per value (same values as the
    processor's two steps up to float32 rounding)."""
    mean, std = spec.mean_std
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    shift = (-mean / std).astype(np.float32)
    x = np.asarray(frames).astype(np.float32)
    x *= scale
    x += shift
    return x


def pad_frames(frames: np.ndarray, multiple: int) -> np.ndarray:
    """Repeats the last frame until the count is a multiple of `multiple`: [T', ...]."""
    pad = -frames.shape[0] % multiple
    if pad == 0:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)], axis=0)


def patchify(frames: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Flattens normalised frames [T, H, W, C] into patches in the processor's order.

    Frames are padded in time to a multiple of temporal_patch_size by repeating the last one
    (a single image becomes two identical frames). In the processor's terms, frames
    (grid_t, T, C, gh/m, m, P, gw/m, m, P) are transposed to (grid_t, gh/m, gw/m, m, m, C, T, P, P)
    and flattened; here the channel axis starts last. Returns patches [grid_t*gh*gw, C*T*P*P]
    float32 and grid (grid_t, gh, gw).
    """
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.spatial_merge_size
    frames = pad_frames(np.asarray(frames, np.float32), tp)
    t, h, w, c = frames.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {p * m}")
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x).reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def vision_input(
    frames: np.ndarray,
    kind: str,
    spec: VisionSpec,
    sample_fps: float | None = None,
    times: np.ndarray | None = None,
) -> VisionInput:
    """Resized uint8 frames [T, H, W, 3] -> VisionInput (normalised, padded, patchified).
    `sample_fps` (videos): frames per second of the sampled frames; `times` (videos): each
    frame's time in seconds, for the temporal patches' timestamps."""
    patches, grid = patchify(normalize(frames, spec), spec)
    seconds = 1.0 if kind == "image" or not sample_fps else spec.temporal_patch_size / sample_fps
    stamps = ()
    if kind == "video" and times is not None and len(times):
        stamps = patch_timestamps(times, spec.temporal_patch_size)
    return VisionInput(
        kind=kind, patches=patches, grid_thw=grid, second_per_grid_t=seconds, timestamps=stamps
    )


# ------------------------------------------------------------------------------------------------
# T-GRPO: frames out of order.


def shuffle_permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of n items that is never the identity when n > 1: [n] int64."""
    if n <= 1:
        return np.arange(n)
    while True:
        perm = rng.permutation(n)
        if np.any(perm != np.arange(n)):
            return perm


def shuffled_patches(
    item: VisionInput, unit: str, spec: VisionSpec, rng: np.random.Generator
) -> np.ndarray:
    """Patches of the same video with its frames shuffled (Video-R1 T-GRPO): same grid, same
    shape as item.patches, computed from the patches alone.

    unit "frame": the (padded) frames are permuted one by one, exactly as if the permuted frames
    had been patchified, so a temporal patch may pair two distant frames. unit "tubelet": whole
    temporal patches (temporal_patch_size consecutive frames) are permuted.
    """
    t, h, w = item.grid_thw
    tp = spec.temporal_patch_size
    if unit == "tubelet":
        perm = shuffle_permutation(t, rng)
        return np.ascontiguousarray(item.patches.reshape(t, h * w, -1)[perm].reshape(t * h * w, -1))
    if unit == "frame":
        perm = shuffle_permutation(t * tp, rng)
        # Patch values are laid out (channel, frame in tubelet, row, column): frame f lives in
        # tubelet f // tp at slot f % tp.
        channels = item.patches.shape[1] // (tp * spec.patch_size**2)
        x = item.patches.reshape(t, h * w, channels, tp, -1)
        out = np.empty_like(x)
        for target, source in enumerate(perm):
            out[target // tp, :, :, target % tp] = x[source // tp, :, :, source % tp]
        return out.reshape(t * h * w, -1)
    raise ValueError(f"unknown shuffle unit {unit!r}; expected 'frame' or 'tubelet'")

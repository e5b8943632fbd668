"""Reading media: video files with decord, frame folders and single images with Pillow.

Every reader returns uint8 RGB frames [T, H, W, 3] already sampled and resized to the vision
tower's grid (`vision_inputs`), so the caller only normalises and patchifies. Any failure (missing
file, empty or undecodable file, unreadable image) raises `MediaError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from jaxvrl.data import vision_inputs as vi

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class MediaError(Exception):
    """A media file that cannot be used; the message names the file and the reason. category:
    "missing_media", "empty_media", "bad_video", "bad_image" or "bad_media" (the skip counters)."""

    def __init__(self, message: str, category: str = "bad_media"):
        super().__init__(message)
        self.category = category


@dataclasses.dataclass(frozen=True)
class FrameSampling:
    """Frame and pixel limits for one read (the config's `data` fields)."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    frame_factor: int = 2
    frame_folder_fps: float = 2.0
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 128 * 28 * 28
    video_total_pixels: int = int(128000 * 28 * 28 * 0.9)
    video_min_pixels_slack: float = 1.05
    image_min_pixels: int = 4 * 28 * 28
    image_max_pixels: int = 256 * 28 * 28
    max_aspect_ratio: float = 200.0
    resized_height: int = 0
    resized_width: int = 0
    decode_threads: int = 1

    @classmethod
    def from_config(cls, data) -> FrameSampling:
        """From a config's `data` section (ConfigDict or mapping)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: type(getattr(cls, n))(data[n]) for n in names if n in data})


@dataclasses.dataclass(frozen=True)
class Frames:
    """Sampled, resized frames of one image or video.

    frames: [T, H, W, 3] uint8. indices: source frame indices [T] (0 for an image).
    sample_fps: frames per second of the sampled sequence (videos; None for images).
    source_size: (height, width) before resizing. times: the sampled frames' times (videos).
    """

    kind: str
    frames: np.ndarray
    indices: np.ndarray
    sample_fps: float | None
    source_size: tuple[int, int]
    times: np.ndarray | None = None  # videos: each frame's time in seconds (Qwen3-VL stamps)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError(f"{path}: missing file", "missing_media")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(f"{path}: empty file", "empty_media")


def video_size(
    height: int, width: int, num_frames: int, s: FrameSampling, spec: vi.VisionSpec
) -> tuple[int, int]:
    """The (height, width) every frame of a `num_frames` video of that source size is resized
    to under the sampling settings' pixel budgets (qwen-vl-utils' fetch_video; Qwen3-VL: its
    video processor's, video_max_pixels the per-frame cap and video_total_pixels the whole
    video's budget)."""
    budgets = dict(
        min_pixels=s.video_min_pixels,
        max_pixels=s.video_max_pixels,
        total_pixels=s.video_total_pixels,
        min_pixels_slack=s.video_min_pixels_slack,
    )
    if spec.family == "qwen3_vl" and not (s.resized_height and s.resized_width):
        return vi.qwen3_video_frame_size(height, width, num_frames, spec, **budgets)
    return vi.video_frame_size(
        height,
        width,
        num_frames,
        spec,
        frame_factor=s.frame_factor,
        resized_height=s.resized_height,
        resized_width=s.resized_width,
        max_aspect_ratio=s.max_aspect_ratio,
        **budgets,
    )


# ------------------------------------------------------------------------------------------------
# Videos.


def num_frames_to_sample(total: int, video_fps: float, s: FrameSampling, spec) -> int:
    """Frames to sample from a video of `total` frames recorded at `video_fps`: qwen-vl-utils'
    rule, or Qwen3-VL's video processor's (spec.family)."""
    if spec.family == "qwen3_vl":
        return vi.qwen3_num_video_frames(total, video_fps, s.fps, s.min_frames, s.max_frames)
    return vi.num_video_frames(total, video_fps, s.fps, s.min_frames, s.max_frames, s.frame_factor)


def read_video(path: str, sampling: FrameSampling, spec: vi.VisionSpec) -> Frames:
    """Decodes a video file with decord, samples frames by fps and resizes them.

    Frames: n = num_video_frames(...) at indices linspace(0, total - 1, n).round(); size from
    video_frame_size (per-frame budget, total cap). sample_fps = n / total * video_fps.
    """
    _check_file(path)
    import decord

    s = sampling
    try:
        reader = decord.VideoReader(path, num_threads=s.decode_threads)
        total, video_fps = len(reader), float(reader.get_avg_fps())
        n = num_frames_to_sample(total, video_fps, s, spec)
        indices = vi.frame_indices(total, n)
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(
            f"{path}: cannot decode video ({type(e).__name__}: {e})", "bad_video"
        ) from e
    if frames.ndim != 4 or frames.shape[0] != n or frames.shape[-1] != 3:
        raise MediaError(f"{path}: decoder returned frames of shape {frames.shape}", "bad_video")
    height, width = frames.shape[1:3]
    try:
        rh, rw = video_size(height, width, n, s, spec)
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from e
    return Frames(
        kind="video",
        frames=vi.resize_frames(frames, rh, rw),
        indices=indices,
        sample_fps=n / total * video_fps,
        source_size=(int(height), int(width)),
        times=indices / video_fps,
    )


# ------------------------------------------------------------------------------------------------
# Images and frame folders.


def load_rgb(path: str) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; transparency is composited over white."""
    _check_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return np.asarray(image.convert("RGB"))
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: cannot read image ({type(e).__name__}: {e})", "bad_image") from e


def read_image(path: str, sampling: FrameSampling, spec: vi.VisionSpec) -> Frames:
    """One image resized by smart_resize into [image_min_pixels, image_max_pixels], or to the
    fixed `resized_height` x `resized_width` (rounded to the factor) when both are set:
    [1, H, W, 3]."""
    rgb = load_rgb(path)
    s = sampling
    fixed = s.resized_height and s.resized_width
    try:
        rh, rw = vi.smart_resize(
            s.resized_height if fixed else rgb.shape[0],
            s.resized_width if fixed else rgb.shape[1],
            spec.factor,
            0 if fixed else s.image_min_pixels,
            1 << 62 if fixed else s.image_max_pixels,
            s.max_aspect_ratio,
        )
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from e
    return Frames(
        kind="image",
        frames=vi.resize_images(rgb[None], rh, rw),
        indices=np.zeros((1,), np.int64),
        sample_fps=None,
        source_size=(rgb.shape[0], rgb.shape[1]),
    )


def list_frame_folder(path: str) -> list[str]:
    """Image files of a frame folder in name order."""
    if not os.path.isdir(path):
        raise MediaError(f"{path}: missing frame folder", "missing_media")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise MediaError(f"{path}: frame folder has no images", "empty_media")
    return [os.path.join(path, n) for n in names]


def read_frame_folder(
    path: str, sampling: FrameSampling, spec: vi.VisionSpec, num_frames: int = 0
) -> Frames:
    """A video stored as image files (name order). With `num_frames` exactly that many frames are
    taken: int(i * (total - 1) / (num_frames - 1)) for i in 0..num_frames-1 (first, evenly
    spaced, last; VideoChat-R1's GOT-10k rule). Otherwise the folder is sampled like a video
    recorded at `frame_folder_fps`. The count is then padded to a multiple of `frame_factor` by
    repeating the last frame; every frame takes the first frame's resized size."""
    s = sampling
    files = list_frame_folder(path)
    total = len(files)
    if num_frames:
        steps = max(num_frames - 1, 1)
        indices = np.array([i * (total - 1) // steps for i in range(num_frames)], np.int64)
        sample_fps = s.fps  # a fixed frame list carries no timing: assume the target rate
        times = np.arange(num_frames) / s.fps
    else:
        try:
            n = num_frames_to_sample(total, s.frame_folder_fps, s, spec)
        except ValueError as e:
            raise MediaError(f"{path}: {e}") from e
        indices = vi.frame_indices(total, n)
        sample_fps = n / total * s.frame_folder_fps
        times = indices / s.frame_folder_fps
    pad = -len(indices) % s.frame_factor
    indices = np.concatenate([indices, np.repeat(indices[-1:], pad)])
    times = np.concatenate([times, np.repeat(times[-1:], pad)])
    rgb = [load_rgb(files[i]) for i in indices]
    height, width = rgb[0].shape[:2]
    try:
        rh, rw = video_size(height, width, len(rgb), s, spec)
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from e
    frames = np.stack([vi.resize_images(f[None], rh, rw)[0] for f in rgb])
    return Frames(
        kind="video",
        frames=frames,
        indices=indices,
        sample_fps=sample_fps,
        source_size=(height, width),
        times=times,
    )


def read_media(
    kind: str, path: str, sampling: FrameSampling, spec: vi.VisionSpec, num_frames: int = 0
) -> Frames:
    """Dispatches on kind ("image" or "video") and on what the path is (file or frame folder)."""
    if kind == "image":
        return read_image(path, sampling, spec)
    if kind != "video":
        raise MediaError(f"{path}: unknown media kind {kind!r}")
    if os.path.isdir(path):
        return read_frame_folder(path, sampling, spec, num_frames)
    return read_video(path, sampling, spec)

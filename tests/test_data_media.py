"""Media readers on small files written here: which frames are read, at what size, and how bad
files fail."""

import os

import numpy as np
import pytest
from PIL import Image

from jaxvrl.data import media
from jaxvrl.data.synthetic import write_video
from jaxvrl.data.vision_inputs import VisionSpec

SPEC = VisionSpec()
# 16 merged tokens per frame keeps the test frames small.
SAMPLING = media.FrameSampling(
    video_min_pixels=16 * 28 * 28, video_max_pixels=16 * 28 * 28, image_max_pixels=64 * 28 * 28
)
LEVEL = 6  # frame i of the test video is grey level 6 * i


@pytest.fixture(scope="module")
def counting_video(tmp_path_factory) -> str:
    """40 frames at 10 fps, 64 x 96, frame i filled with grey level 6 * i."""
    path = str(tmp_path_factory.mktemp("media") / "count.mp4")
    frames = np.stack([np.full((64, 96, 3), LEVEL * i, np.uint8) for i in range(40)])
    write_video(path, frames, fps=10)
    return path


def test_video_reads_the_hand_computed_frames_at_the_budget_size(counting_video):
    out = media.read_video(counting_video, SAMPLING, SPEC)
    # 4 s at 2 fps -> 8 frames; linspace(0, 39, 8) = 0, 5.57, 11.1, 16.7, 22.3, 27.9, 33.4, 39
    np.testing.assert_array_equal(out.indices, [0, 6, 11, 17, 22, 28, 33, 39])
    # 64 x 96 -> 56 x 84 = 4704 < 12544 -> beta 1.4289 -> ceil(3.27) * 28, ceil(4.90) * 28
    assert out.frames.shape == (8, 112, 140, 3)
    assert out.source_size == (64, 96)
    assert out.sample_fps == pytest.approx(2.0)  # 8 frames of 40 at 10 fps
    decoded = np.round(out.frames.reshape(8, -1).mean(axis=1) / LEVEL)
    np.testing.assert_array_equal(decoded, out.indices)


def test_total_frame_limits_come_from_the_sampling_settings(counting_video):
    few = media.FrameSampling(**{**SAMPLING.__dict__, "max_frames": 4})
    out = media.read_video(counting_video, few, SPEC)
    np.testing.assert_array_equal(out.indices, [0, 13, 26, 39])  # linspace(0, 39, 4)


def write_frames(folder, count, size=(60, 80)):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = np.full((*size, 3), LEVEL * i, np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))


def test_frame_folder_is_sampled_like_a_video_at_its_frame_rate(tmp_path):
    folder = str(tmp_path / "frames")
    write_frames(folder, 9)
    out = media.read_frame_folder(folder, SAMPLING, SPEC)
    # 9 frames at 2 fps = 4.5 s -> 9 frames -> 8 (even); linspace(0, 8, 8)
    np.testing.assert_array_equal(out.indices, [0, 1, 2, 3, 5, 6, 7, 8])
    decoded = np.round(out.frames.reshape(8, -1).mean(axis=1) / LEVEL)
    np.testing.assert_array_equal(decoded, out.indices)


def test_fixed_frame_count_takes_first_evenly_spaced_and_last_then_pads(tmp_path):
    folder = str(tmp_path / "got")
    write_frames(folder, 20)
    out = media.read_frame_folder(folder, SAMPLING, SPEC, num_frames=7)
    # int(i * 19 / 6) for i = 0..6, padded to 8 by repeating the last frame
    np.testing.assert_array_equal(out.indices, [0, 3, 6, 9, 12, 15, 19, 19])
    assert out.frames.shape[0] == 8


def test_image_is_resized_into_its_budget_and_transparency_becomes_white(tmp_path):
    rgba = np.zeros((300, 200, 4), np.uint8)  # fully transparent
    path = str(tmp_path / "clear.png")
    Image.fromarray(rgba, "RGBA").save(path)
    out = media.read_image(path, SAMPLING, SPEC)
    # 300 x 200 -> 308 x 196 = 60368 > 50176 -> beta 1.0935 -> floor(9.80) * 28, floor(6.53) * 28
    assert out.frames.shape == (1, 252, 168, 3)
    assert out.frames.min() == 255


def test_fixed_size_resizes_images_too(tmp_path):
    # SEED-Bench-R1 sets resized 256 x 256 on every vision item (vision_process_egoplan.py:351):
    # smart_resize(256, 256) = 252 x 252, whatever the image's own size.
    path = str(tmp_path / "wide.png")
    Image.fromarray(np.zeros((300, 500, 3), np.uint8)).save(path)
    fixed = media.FrameSampling(
        **{**SAMPLING.__dict__, "resized_height": 256, "resized_width": 256}
    )
    assert media.read_image(path, fixed, SPEC).frames.shape == (1, 252, 252, 3)


@pytest.mark.parametrize(
    "name, content, kind, category",
    [
        ("missing.mp4", None, "video", "missing_media"),
        ("empty.mp4", b"", "video", "empty_media"),
        ("corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8, "video", "bad_video"),
        ("text.png", b"this is not an image", "image", "bad_image"),
        ("missing.jpg", None, "image", "missing_media"),
    ],
)
def test_bad_media_raises_media_error_naming_the_file(tmp_path, name, content, kind, category):
    path = str(tmp_path / name)
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(media.MediaError, match=name) as info:
        media.read_media(kind, path, SAMPLING, SPEC)
    assert info.value.category == category


def test_empty_frame_folder_is_bad_media(tmp_path):
    os.makedirs(tmp_path / "none")
    with pytest.raises(media.MediaError, match="no images") as info:
        media.read_media("video", str(tmp_path / "none"), SAMPLING, SPEC)
    assert info.value.category == "empty_media"

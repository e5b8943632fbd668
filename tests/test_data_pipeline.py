"""The Grain pipeline: static-shape batches, T-GRPO companions, sharding, bad input, and resuming
from a saved iterator state in a new process."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from jaxvrl.data import pipeline, synthetic
from jaxvrl.data.synthetic import write_video
from model.config import ModelConfig
from model.rope import rope_index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("demo"))
    config = small_config(directory)
    synthetic.ensure_from_config(config)
    return directory


def small_config(directory, **data):
    """The demo config on a 12-video, 6-image synthetic set, 4 examples per batch."""
    config = demo.get_config(directory)
    config.data.batch_size = 4
    config.data.synthetic.num_videos = 12
    config.data.synthetic.num_images = 6
    config.data.train_files = os.path.join(directory, "train.json")  # videos and images
    config.data.update(data)
    return config


def batches(config, n=None, counts=None, **kwargs):
    """The first n batches (all when n is None); `counts` (a dict) receives the skip counts."""
    it = iter(pipeline.build_dataset(config, process_index=0, process_count=1, **kwargs))
    out = [b for _, b in zip(range(n), it, strict=False)] if n else list(it)
    if counts is not None:
        counts.update(it.skip_counts())
    it.close()
    return out


def valid_uids(out):
    return [u for b in out for u, m in zip(b["meta"]["uid"], b["example_mask"], strict=True) if m]


def digest(batch) -> str:
    h = hashlib.sha256()
    for key in ("input_ids", "attention_mask", "positions", "rope_deltas", "example_mask"):
        h.update(batch[key].tobytes())
    for key in ("vision", "vision_shuffled"):
        for name in sorted(batch.get(key, {})):
            h.update(batch[key][name].tobytes())
    h.update(json.dumps(batch["meta"]["uid"]).encode())
    return h.hexdigest()


def test_batches_are_padded_to_buckets_with_rope_index_positions(demo_dir):
    config = small_config(demo_dir)
    model_config = ModelConfig.from_pretrained(config.model.path)
    for batch in batches(config, 3):
        b, length = batch["input_ids"].shape
        assert b == 4 and length in config.data.token_buckets
        assert batch["positions"].shape == (3, b, length)
        n = batch["vision"]["patches"].shape[0]
        assert n in config.data.patch_buckets and batch["vision"]["patches"].shape[1] == 1176
        assert batch["vision"]["window_index"].shape == (n // 4,)
        assert batch["input_ids"].dtype == np.int32 and batch["positions"].dtype == np.int32
        assert batch["vision"]["patches"].dtype == np.float32
        assert batch["example_mask"].all()
        grids = [g for row in batch["meta"]["grid_thw"] for g in row]
        total = sum(t * h * w for t, h, w in grids)
        assert (batch["vision"]["segment_ids"] > 0).sum() == total
        is_pad = np.isin(
            batch["input_ids"], [model_config.video_token_id, model_config.image_token_id]
        )
        assert is_pad.sum() == total // 4  # one pad token per merged feature
        for row in range(b):
            valid = batch["attention_mask"][row].astype(bool)
            assert valid[: valid.sum()].all()  # right padding
            ids = batch["input_ids"][row][valid]
            kinds = batch["meta"]["media_kinds"][row]
            g = np.array(batch["meta"]["grid_thw"][row])
            images = g[[k == "image" for k in kinds]] if "image" in kinds else None
            videos = g[[k == "video" for k in kinds]] if "video" in kinds else None
            expected, delta = rope_index(ids[None], None, model_config, images, videos)
            np.testing.assert_array_equal(batch["positions"][:, row][:, valid], expected[:, 0])
            assert batch["rope_deltas"][row] == delta[0]
            assert (batch["positions"][:, row][:, ~valid] == 0).all()


def test_left_padding_puts_every_prompt_at_the_end(demo_dir):
    (batch,) = batches(small_config(demo_dir, padding_side="left"), 1)
    mask = batch["attention_mask"].astype(bool)
    assert mask[:, -1].all()
    for row in mask:
        assert row[row.argmax() :].all()


def test_shuffled_companion_changes_video_frames_only(demo_dir):
    (batch,) = batches(small_config(demo_dir), 1)
    vision, shuffled = batch["vision"], batch["vision_shuffled"]
    for key in ("pos_hw", "segment_ids", "window_ids", "window_index"):
        np.testing.assert_array_equal(vision[key], shuffled[key])
    start = 0
    for row, grids in enumerate(batch["meta"]["grid_thw"]):
        for t, h, w in grids:
            a = vision["patches"][start : start + t * h * w]
            b = shuffled["patches"][start : start + t * h * w]
            assert np.array_equal(a, b) != batch["is_video"][row]
            start += t * h * w
    (tubelets,) = batches(small_config(demo_dir, shuffle_unit="tubelet"), 1)
    (none,) = batches(small_config(demo_dir, shuffle_unit="none"), 1)
    assert "vision_shuffled" in tubelets and "vision_shuffled" not in none


def test_each_process_reads_a_disjoint_share_of_the_records(demo_dir):
    config = small_config(demo_dir, num_epochs=1, shuffle=False, batch_size=4)
    seen = []
    for index in range(2):
        out = list(pipeline.build_dataset(config, process_index=index, process_count=2))
        assert all(len(b["meta"]["uid"]) == 2 for b in out)  # 4 prompts a step over 2 hosts
        seen.append(valid_uids(out))
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 18


def test_the_processes_blocks_make_up_the_single_process_batches(demo_dir):
    # The global batch of each step holds the same examples, in the same order, whatever the
    # number of processes (2 epochs, shuffled: the order crosses an epoch boundary).
    config = small_config(demo_dir, num_epochs=2, shuffle=True, batch_size=4)
    single = [
        b["meta"]["uid"] for b in pipeline.build_dataset(config, process_index=0, process_count=1)
    ]
    blocks = [
        [b["meta"]["uid"] for b in pipeline.build_dataset(config, process_index=i, process_count=2)]
        for i in range(2)
    ]
    assert len(blocks[0]) == len(blocks[1]) == len(single) == 9
    for step, uids in enumerate(single):
        assert blocks[0][step] + blocks[1][step] == uids


def test_epochs_are_reshuffled_and_the_last_batch_is_filled(demo_dir):
    config = small_config(demo_dir, num_epochs=2, batch_size=4)
    out = batches(config)
    uids = [u for b in out for u in b["meta"]["uid"]]
    assert len(uids) == 36 and len(out) == 9
    first, second = uids[:18], uids[18:]
    assert sorted(first) == sorted(second) and first != second
    config = small_config(demo_dir, num_epochs=1, batch_size=8)
    last = batches(config)[-1]
    np.testing.assert_array_equal(last["example_mask"], [True] * 2 + [False] * 6)
    assert (last["attention_mask"][2:].sum(axis=1) == 1).all()


@pytest.fixture(scope="module")
def bad_records(demo_dir, tmp_path_factory):
    """A record file mixing good rows with every kind of bad input."""
    root = tmp_path_factory.mktemp("bad")
    with open(os.path.join(demo_dir, "train.json")) as f:
        good = json.load(f)
    video = next(r for r in good if r["data_type"] == "video")
    image = next(r for r in good if r["data_type"] == "image")
    for name, content in (("corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048)),
                          ("empty.mp4", b""), ("text.png", b"not a png")):  # fmt: skip
        (root / name).write_bytes(content)
    write_video(str(root / "ok.mp4"), np.full((4, 56, 56, 3), 128, np.uint8), fps=2)
    rows = [
        {**video, "path": os.path.join(demo_dir, video["path"]), "problem_id": "good_video"},
        {**video, "path": str(root / "corrupt.mp4"), "problem_id": "corrupt"},
        {**video, "path": str(root / "empty.mp4"), "problem_id": "empty"},
        {**video, "path": str(root / "missing.mp4"), "problem_id": "missing"},
        {**image, "path": str(root / "text.png"), "problem_id": "unreadable"},
        {k: v for k, v in video.items() if k != "solution"},
        {**video, "path": str(root / "ok.mp4"), "problem_type": "riddle"},
        {**image, "path": os.path.join(demo_dir, image["path"]), "problem_id": "good_image"},
    ]
    path = root / "bad.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_bad_inputs_are_skipped_and_counted(demo_dir, bad_records):
    config = small_config(demo_dir, train_files=bad_records, num_epochs=1, batch_size=2)
    counts = {}
    out = batches(config, counts=counts)
    assert sorted(valid_uids(out)) == ["good_image", "good_video"]
    assert counts == {
        "malformed_record": 1,
        "unknown_problem_type": 1,
        "bad_video": 1,
        "empty_media": 1,
        "missing_media": 1,
        "bad_image": 1,
    }
    # Batches carry the running count for the metrics.
    assert out[-1]["meta"]["skipped"] == sum(out[-1]["meta"]["skip_counts"].values()) >= 2


def test_examples_past_the_largest_bucket_are_skipped_and_an_all_skipped_shard_stops(demo_dir):
    config = small_config(demo_dir, token_buckets=(32,), num_epochs=0)
    it = iter(pipeline.build_dataset(config, process_index=0, process_count=1))
    with pytest.raises(pipeline.DataError, match="all 18 examples of this shard were skipped"):
        next(it)
    assert it.skip_counts() == {"too_long": 18}


def test_strict_mode_names_the_file_and_the_record(demo_dir, bad_records):
    config = small_config(demo_dir, train_files=bad_records, strict=True)
    with pytest.raises(pipeline.DataError, match=r"bad\.json:5: malformed video_r1 record"):
        pipeline.build_dataset(config, process_index=0, process_count=1)
    # Only media problems left: the first bad row met raises, naming record and file.
    with open(bad_records) as f:
        rows = json.load(f)
    media_only = bad_records.replace("bad.json", "media_only.json")
    with open(media_only, "w") as f:
        json.dump(rows[:5], f)
    config = small_config(demo_dir, train_files=media_only, strict=True, shuffle=False)
    with pytest.raises(
        pipeline.DataError, match=r"media_only\.json:1: .*corrupt\.mp4: cannot decode"
    ):
        batches(config)


RESUME = """
import json, sys
from configs import demo
from jaxvrl.data import pipeline
sys.path.insert(0, {tests!r})
from test_data_pipeline import digest, small_config
config = small_config({directory!r}, num_workers=2)
it = iter(pipeline.build_dataset(config, process_index=0, process_count=1))
with open({state!r}) as f:
    it.set_state(json.load(f))
print(json.dumps([digest(next(it)) for _ in range(5)]))
it.close()
"""


def test_restoring_the_iterator_state_in_a_new_process_gives_the_same_batches(demo_dir, tmp_path):
    reference = [digest(b) for b in batches(small_config(demo_dir), 10, num_workers=0)]
    config = small_config(demo_dir, num_workers=2)
    it = iter(pipeline.build_dataset(config, process_index=0, process_count=1))
    first = [digest(next(it)) for _ in range(5)]
    state_path = str(tmp_path / "state.json")
    with open(state_path, "w") as f:
        json.dump(it.get_state(), f)
    it.close()
    script = RESUME.format(tests=os.path.join(REPO, "tests"), directory=demo_dir, state=state_path)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    second = json.loads(run.stdout.strip().splitlines()[-1])
    assert first + second == reference  # and 2 workers give what 0 workers give
    assert shutil.which(sys.executable)

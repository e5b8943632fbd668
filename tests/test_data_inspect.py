"""The dataset checker, run as users run it: `python -m jaxvrl.data.inspect --config=...`."""

import json
import os
import subprocess
import sys

import pytest

from configs import demo
from jaxvrl.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.data.synthetic.num_videos=8", "--config.data.synthetic.num_images=4"]


def run_inspect(directory, *args):
    command = [sys.executable, "-m", "jaxvrl.data.inspect", f"--config=configs/demo.py:{directory}"]
    return subprocess.run(
        command + SMALL + list(args), cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("inspect"))
    config = demo.get_config(directory)
    config.data.synthetic.num_videos, config.data.synthetic.num_images = 8, 4
    synthetic.ensure_from_config(config)
    with open(os.path.join(directory, "train.json")) as f:
        video = next(r for r in json.load(f) if r["data_type"] == "video")
    with open(os.path.join(directory, "broken.mp4"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))
    bad = [
        {**video, "problem_id": "broken", "path": "broken.mp4"},
        {**video, "problem_id": "gone", "path": "videos/gone.mp4"},
        {**video, "problem_type": "riddle"},
        {"problem": "no fields"},
    ]
    with open(os.path.join(directory, "bad.json"), "w") as f:
        json.dump(bad, f)
    return directory


def test_report_counts_types_and_lists_every_skipped_record(dataset):
    files = f"{dataset}/train.json,{dataset}/bad.json"
    run = run_inspect(dataset, f"--config.data.train_files={files}", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["ok"] == 12 and report["skipped"] == 4
    assert report["by_data_type"] == {"image": 4, "video": 8}
    assert report["skipped_by_category"] == {
        "bad_video": 1, "missing_media": 1, "unknown_problem_type": 1, "malformed_record": 1,
    }  # fmt: skip
    assert report["video_frames"]["min"] == report["video_frames"]["max"] == 4
    assert report["prompt_tokens"]["count"] == 12
    origins = {s["origin"] for s in report["skipped_records"]}
    assert origins == {f"{dataset}/bad.json:{i}" for i in range(4)}
    assert "broken.mp4: cannot decode video" in run.stdout
    assert "records that load: 12    skipped: 4" in run.stdout


def test_config_overrides_change_what_is_checked(dataset):
    run = run_inspect(dataset, "--config.data.min_frames=2", "--config.data.max_frames=2", "--json")
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["video_frames"]["max"] == 2 and report["skipped"] == 0


def test_unknown_config_field_is_a_clear_error(dataset):
    run = run_inspect(dataset, "--config.data.max_frame=8")
    assert run.returncode == 2
    assert "error: unknown config key 'data.max_frame' (did you mean 'data.max_frames'?)" in (
        run.stderr
    )

"""The trainer end to end on the synthetic set: a shortened demo (SFT then T-GRPO, evaluated
during training), a run killed with SIGKILL and restarted ends bit-identical to an uninterrupted
one (and samples the same completions), `seed` moves every sample, an error inside the data
pipeline ends a run with one line, and the exported model loads in transformers with the port's
logits."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from demo_fixtures import shrunk_demo, trainer_env
from safetensors.numpy import load_file

from jaxvrl.metrics import read_metrics
from model import parity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def short_overrides(root: str, workdir: str) -> list[str]:
    """The demo shortened to seconds: a small set, 3 SFT and 4 RL steps, checkpoints every 2, two
    held-out videos evaluated before the first step, every 4 steps, at the start of RL and at
    the end (steps 0, 3, 4, 7)."""
    return shrunk_demo(
        root,
        workdir,
        "--config.sft.steps=3",
        "--config.rl.steps=4",
        "--config.checkpoint.every=2",
        "--config.eval.every=4",
        "--config.eval.num_examples=2",
        "--config.metrics.completions_every=1",
        f"--config.export.hf_dir={workdir}/hf",
    )


def command(root: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "jaxvrl.train", *short_overrides(root, workdir)]


def run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    """A trainer command run to its end; it must succeed."""
    result = subprocess.run(
        cmd, cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def root(small_demo_set):
    return small_demo_set


@pytest.fixture(scope="module")
def uninterrupted(root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run_a"))
    result = run_to_end(command(root, workdir))
    return workdir, result.stdout, result.stderr


def test_short_demo_trains_both_stages_and_reports(uninterrupted):
    workdir, stdout, stderr = uninterrupted
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == list(range(0, 8))
    assert [r.get("stage") for r in rows] == [None] + ["sft"] * 3 + ["rl"] * 4
    evaluated = [r["step"] for r in rows if "eval/video_r1/accuracy" in r]
    assert evaluated == [0, 3, 4, 7]
    for step in evaluated:
        with open(os.path.join(workdir, "eval", f"{step}.json")) as f:
            result = json.load(f)["benchmarks"]["video_r1"]
        assert result["count"] == 2
        assert rows[step]["eval/video_r1/accuracy"] == result["metrics"]["accuracy"]
    with open(os.path.join(workdir, "report", "report.md")) as f:
        table = f.read()
    assert "| video_r1 | accuracy |" in table and "step 7" in table
    assert os.path.isfile(os.path.join(workdir, "report", "video_r1.png"))
    rl = rows[-1]
    for key in ("reward/total", "reward/accuracy", "reward/format", "accuracy", "train/kl",
                "train/clip_fraction_low", "train/entropy", "train/sampler_logp_abs_diff",
                "grad_norm", "learning_rate", "tokens_per_second", "step_time/rollout",
                "step_time/train", "compilations/sampler", "temporal/p", "temporal/p_shuffled",
                "temporal/bonus_rate", "completion_length", "data/skipped_records"):  # fmt: skip
        assert key in rl, key
    # The host's share: the step's time outside the rollouts' and the updates' device programs.
    for row in rows[1:]:
        assert 0.0 < row["step_time/host"] < row["step_time/total"], row
    assert rl["step_time/host"] + rl["step_time/train"] < rl["step_time/total"]
    with open(os.path.join(workdir, "demo_eval.json")) as f:
        report = json.load(f)
    assert 0.0 <= report["accuracy_before"] <= 1.0 and 0.0 <= report["accuracy_after"] <= 1.0
    assert "held-out accuracy" in stdout
    assert os.path.isdir(os.path.join(workdir, "tensorboard"))
    # The terminal holds none of the C++ libraries' log lines; they are in train.log.
    assert not NATIVE_LOG_LINE.search(stderr), stderr[-3000:]
    assert "absl::InitializeLog" not in stderr


# A line of absl's C++ logging (XLA, libtpu, the CUDA stubs): "I0000 00:00:... file.cc:31] ...".
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+\.(cc|h):\d+\]", re.MULTILINE)


def test_export_of_the_trained_model_loads_in_transformers_with_the_port_logits(uninterrupted):
    workdir, _, _ = uninterrupted
    rows = parity.compare(os.path.join(workdir, "hf"), tolerance=1e-4)
    assert all(r["ok"] for r in rows), rows


def _wait_for_step(path: str, step: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-3000:]}")
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def _wait_for_path(path: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while not os.path.isdir(path):
        if proc.poll() is not None or time.time() - start > timeout:
            raise AssertionError(f"no {path} (run ended: {proc.poll() is not None})")
        time.sleep(0.05)


def test_sigkill_and_restart_ends_bit_identical_to_an_uninterrupted_run(
    root, uninterrupted, tmp_path
):
    workdir_a, _, _ = uninterrupted
    workdir = str(tmp_path / "run_b")
    proc = subprocess.Popen(
        command(root, workdir), cwd=REPO, env=trainer_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Killed inside the RL stage, once its first checkpoint (step 4, saved in the background)
    # is complete: killed before that, the run restarts at the stage boundary (step 3) and
    # logs no "resumed" (the test failed so on a loaded 2-core VM).
    _wait_for_step(os.path.join(workdir, "metrics.jsonl"), 5, proc)
    _wait_for_path(os.path.join(workdir, "checkpoints", "4"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run_to_end(command(root, workdir))
    assert "resumed" in result.stderr
    a = load_file(os.path.join(workdir_a, "hf", "model.safetensors"))
    b = load_file(os.path.join(workdir, "hf", "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    rows = read_metrics(workdir)
    assert [row["step"] for row in rows] == list(range(0, 8))
    # The restarted process loaded programs from the compilation cache the earlier runs filled.
    assert 0 < rows[-1]["compile/cache_hits"] <= rows[-1]["compile/programs"]
    assert completions(workdir) == completions(workdir_a)  # before and after the resume


def completions(workdir: str) -> dict[int, list[dict]]:
    """The completions each RL step sampled (WORKDIR/completions/<step>.jsonl)."""
    directory = os.path.join(workdir, "completions")
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            out[int(name.split(".")[0])] = [json.loads(line) for line in f]
    return out


def test_each_rl_step_writes_the_completions_it_sampled(uninterrupted):
    workdir_a, _, _ = uninterrupted
    a = completions(workdir_a)
    assert sorted(a) == [4, 5, 6, 7]
    for rows in a.values():  # 4 prompts x G = 4 per sampler call (a DAPO refill adds one)
        calls = sorted({r["rollout"] for r in rows})
        assert calls in ([0], [0, 1]) and len(rows) == 16 * len(calls)
        assert {r["sample"] for r in rows} == {0, 1, 2, 3}
    assert len({r["text"] for rows in a.values() for r in rows}) > 16  # sampled, not greedy


def test_another_seed_samples_other_completions(root, uninterrupted, tmp_path):
    """(The same seed samples the same ones: the SIGKILL test compares a resumed run's.)"""
    workdir_a, _, _ = uninterrupted
    workdir = str(tmp_path / "seed_1")
    cmd = [*command(root, workdir), "--config.rl.steps=1", "--config.seed=1",
           "--config.eval.files=", "--config.export.hf_dir="]  # fmt: skip
    run_to_end(cmd)
    seed_0 = [r["text"] for r in completions(workdir_a)[4] if r["rollout"] == 0]
    seed_1 = [r["text"] for r in completions(workdir)[4] if r["rollout"] == 0]
    assert len(seed_0) == len(seed_1) == 16
    assert sum(x != y for x, y in zip(seed_0, seed_1, strict=True)) > len(seed_0) // 2


def test_checkpoint_export_cli_writes_the_final_parameters(uninterrupted, tmp_path):
    from jaxvrl import checkpoint

    workdir, _, _ = uninterrupted
    out = str(tmp_path / "exported")
    assert checkpoint.main(["export", f"--workdir={workdir}", f"--out={out}"]) == 0
    a = load_file(os.path.join(workdir, "hf", "model.safetensors"))
    b = load_file(os.path.join(out, "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))


def test_restart_at_the_stage_boundary_evaluates_and_trains_from_the_sft_end(
    root, uninterrupted, tmp_path
):
    """A run stopped right after the SFT stage (its last checkpoint, no RL one yet) restarts with
    the SFT parameters: the before-RL evaluation and the final parameters equal the
    uninterrupted run's."""
    workdir_a, _, _ = uninterrupted
    workdir = str(tmp_path / "run_c")
    sft_only = [*command(root, workdir), "--config.rl.steps=0"]
    for cmd in (sft_only, command(root, workdir)):
        run_to_end(cmd)
    with open(os.path.join(workdir_a, "eval", "3.json")) as f:
        before_a = json.load(f)["benchmarks"]["video_r1"]
    with open(os.path.join(workdir, "eval", "3.json")) as f:
        before_c = json.load(f)["benchmarks"]["video_r1"]
    assert before_c["metrics"] == before_a["metrics"] and before_c["count"] == 2
    assert os.path.isfile(os.path.join(workdir, "eval", "7.json"))
    a = load_file(os.path.join(workdir_a, "hf", "model.safetensors"))
    c = load_file(os.path.join(workdir, "hf", "model.safetensors"))
    for key in a:
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)


# Loaded by the run's interpreter (PYTHONPATH): every frame read raises an error that is not one
# of the bad inputs the pipeline counts and skips.
CRASHING_DECODER = """
from jaxvrl.data import media

def read_media(*args, **kwargs):
    raise RuntimeError("decoder crashed")

media.read_media = read_media
"""


def test_an_error_inside_the_data_pipeline_ends_the_run_with_one_line(root, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(CRASHING_DECODER)
    workdir = str(tmp_path / "run")
    env = trainer_env(PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}")
    result = subprocess.run(
        command(root, workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: reading record ")
    assert "/eval.json:0: " in lines[0]  # the first record read: held-out, before step 1
    assert lines[0].endswith(f"RuntimeError: decoder crashed (traceback in {workdir}/train.log)")
    with open(os.path.join(workdir, "train.log")) as f:
        log = f.read()
    assert "Traceback (most recent call last)" in log and "decoder crashed" in log

"""The step predicted from its compiled programs at the chip's roofline (jaxvrl/fit/predict.py),
on a TPU slice compiled by libtpu in a subprocess."""

from __future__ import annotations

import json

import pytest
from test_fit import _fit_subprocess, needs_libtpu, tpu_rl_report

from jaxvrl.fit import predict


def _report(tiny_model, *extra):
    if not extra:
        return tpu_rl_report(tiny_model)
    args = ["--config.sft.steps=0", "--topology=v5p:2x2x1", "--json", *extra]
    done = _fit_subprocess(args, tiny_model)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def test_parts_of_a_step():
    assert predict.part_of("rl/rollout") == "rollout"
    assert predict.part_of("rl/reference_logprobs") == "reference"
    assert predict.part_of("rl/old_logprobs") == "reference"
    assert predict.part_of("rl/train_step") == "train"
    assert predict.part_of("sft/train_step") == "train"


@needs_libtpu
def test_the_rl_step_is_predicted_from_its_programs_at_the_roofline(tiny_model):
    report, stdout = _report(tiny_model)
    programs = {p["name"]: p for p in report["programs"]}
    # Each program at the largest of its compute, memory and collective seconds, as often as a
    # step runs it (the rollout once per micro-batch, 2; the log-probs and the train step once).
    expected = {"rollout": 0.0, "reference": 0.0, "train": 0.0}
    for name, part in (
        ("rl/rollout", "rollout"),
        ("rl/reference_logprobs", "reference"),
        ("rl/train_step", "train"),
    ):
        p = programs[name]
        seconds = max(p["compute_seconds"], p["memory_seconds"], p["collective_seconds"])
        expected[part] += seconds * p["runs_per_step"]
    assert report["predicted"]["rl"]["split_seconds"] == pytest.approx(expected)
    assert report["predicted_step_seconds"] == pytest.approx(sum(expected.values()))
    # 8 prompts x 2 micro-batches x G = 2 samples x (24 prompt + 8 completion tokens).
    assert report["completion_tokens"] == 8
    assert report["tokens_per_step"] == 8 * 2 * 2 * (24 + 8)
    per_chip = report["tokens_per_step"] / report["predicted_step_seconds"] / 4
    assert report["predicted_tokens_per_second_per_chip"] == pytest.approx(per_chip)
    step_flops = report["step_flops"]["rl"]
    mfu = step_flops / (report["predicted_step_seconds"] * 4 * 459e12)
    assert report["predicted_mfu"] == pytest.approx(mfu) and 0 < mfu < 1
    assert "rl step predicted at the roofline" in stdout

    # Fewer completion tokens: a shorter decode loop, fewer tokens, the same train step.
    short, _ = _report(tiny_model, "--completion_tokens=3")
    shorter = {p["name"]: p for p in short["programs"]}
    assert short["completion_tokens"] == 3
    assert (
        shorter["rl/rollout"]["hbm_bytes_per_chip"] < programs["rl/rollout"]["hbm_bytes_per_chip"]
    )
    assert shorter["rl/rollout"]["flops"] < programs["rl/rollout"]["flops"]
    assert shorter["rl/train_step"]["flops"] == programs["rl/train_step"]["flops"]
    assert short["tokens_per_step"] == 8 * 2 * 2 * (24 + 3)

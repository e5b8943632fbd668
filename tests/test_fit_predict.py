"""The step predicted from its compiled programs at the chip's roofline (jaxvrl/fit/predict.py),
on a TPU slice compiled by libtpu in a subprocess and on the test process's CPU devices."""

from __future__ import annotations

import pytest
from test_fit import cpu_report, needs_libtpu, tpu_rl_report

from jaxvrl.fit import predict


def test_parts_of_a_step():
    assert predict.part_of("rl/rollout") == "rollout"
    assert predict.part_of("rl/reference_logprobs") == "reference"
    assert predict.part_of("rl/old_logprobs") == "reference"
    assert predict.part_of("rl/train_step") == "train"
    assert predict.part_of("sft/train_step") == "train"
    assert predict.part_of("rl/optimizer_update") == "optimizer"


@needs_libtpu
def test_the_rl_step_is_predicted_from_its_programs_at_the_roofline(tiny_model):
    report, stdout = tpu_rl_report(tiny_model)
    programs = {p["name"]: p for p in report["programs"]}
    # Each program at the largest of its compute, memory and collective seconds, as often as a
    # step runs it (the rollout once per micro-batch, 2; the log-probs and the train step once).
    # The train step's optimizer part, compiled alone, is moved out of its time.
    expected = {"rollout": 0.0, "reference": 0.0, "train": 0.0}

    def seconds(p):
        return max(p["compute_seconds"], p["memory_seconds"], p["collective_seconds"])

    for name, part in (
        ("rl/rollout", "rollout"),
        ("rl/reference_logprobs", "reference"),
        ("rl/train_step", "train"),
    ):
        expected[part] += seconds(programs[name]) * programs[name]["runs_per_step"]
    update = programs["rl/optimizer_update"]
    assert update["runs_per_step"] == 0 and update["bound"] == "memory"
    expected["optimizer"] = seconds(update)
    expected["train"] -= expected["optimizer"]
    assert 0 < expected["optimizer"] < expected["train"]
    # It reads and writes each float32 parameter and both moments, and reads its gradient: at
    # least 7 x 4 bytes per parameter (each chip its share).
    params_bytes_per_chip = report["resident_gib"]["rl/params"] * 2**30
    assert update["hbm_bytes_per_chip"] >= 7 * params_bytes_per_chip
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

    # One more completion token: one more trip of the rollout's decode loop, inside its total;
    # no other program has such a loop.
    rollout = programs["rl/rollout"]
    assert 0 < 7 * rollout["token_hbm_bytes_per_chip"] < rollout["hbm_bytes_per_chip"]
    assert 0 < 7 * rollout["token_flops"] < rollout["flops"]
    assert "one more completion token reads" in stdout
    for name in (
        "rl/optimizer_init",
        "rl/optimizer_update",
        "rl/reference_logprobs",
        "rl/train_step",
    ):
        assert programs[name]["token_flops"] is None
        assert programs[name]["token_hbm_bytes_per_chip"] is None


def test_fewer_completion_tokens_price_a_shorter_decode(tiny_model):
    # The CPU report is compiled at --completion_tokens=3 of the 8 (test_fit.cpu_report): the
    # decode loop is priced at 2 trips after the prefill's token. (A CPU has no peak to predict
    # a step at; the TPU report's test above counts the step's tokens.)
    report, _ = cpu_report(tiny_model)
    assert report["completion_tokens"] == 3
    programs = {p["name"]: p for p in report["programs"]}
    rollout = programs["rl/rollout"]
    assert 0 < 2 * rollout["token_flops"] < rollout["flops"]
    assert 0 < 2 * rollout["token_hbm_bytes_per_chip"] < rollout["hbm_bytes_per_chip"]
    assert programs["rl/train_step"]["token_flops"] is None

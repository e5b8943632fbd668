"""jaxvrl.fit: every program of a run compiled ahead of time from shapes, its JSON report, and
its verdict (exit 0 fits, 1 does not, 2 bad input), on the test process's 8 CPU devices and on a
TPU slice compiled by libtpu in a subprocess (the test process already runs JAX on the CPU)."""

import contextlib
import functools
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
from demo_fixtures import QUICK_COMPILE

from jaxvrl.fit import check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Video-R1's recipe (SFT then T-GRPO with a reference model) shrunk to a tiny model and batch.
TINY = [
    "--config=configs/video_r1.py",
    "--config.model.param_dtype=float32",
    "--config.model.dtype=float32",
    "--config.data.max_frames=4",
    "--config.data.video_min_pixels=3136",
    "--config.data.video_max_pixels=3136",
    "--config.data.batch_size=8",
    "--config.data.token_buckets=(64,128)",
    "--config.data.patch_buckets=(512,1024)",
    "--config.rollout.prompt_buckets=(64,128)",
    "--config.rollout.patch_buckets=(512,1024)",
    "--config.rl.max_completion_tokens=8",
    "--config.rl.num_generations=2",
    "--config.rl.shuffled_generations=1",
    "--config.train.micro_batches=2",
    "--config.train.logprob_chunk=64",
    "--text_tokens=16",
    "--target_tokens=8",
]


def run_in_process(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = check.main(args)
    return code, out.getvalue(), err.getvalue()


@functools.cache
def cpu_report(tiny_model: str) -> tuple[dict, str]:
    """The fit check's JSON report and stdout for both tiny stages on the test process's 8 CPU
    devices in a data 2 x fsdp 2 x tensor 2 mesh, the decode priced at 3 completion tokens,
    compiled once per test process: test_fit, test_fit_compiler_log and test_fit_predict read it
    (conftest runs the fit files in one process)."""
    code, out, _ = run_in_process(
        [
            *TINY,
            f"--config.model.path={tiny_model}",
            "--config.mesh.shape={'data': 2, 'fsdp': 2, 'tensor': 2}",
            "--config.data.batch_size=4",
            "--topology=cpu",
            "--completion_tokens=3",
            "--json",
        ]
    )
    assert code == 0, out[-2000:]
    return json.loads(out.strip().splitlines()[-1]), out


def test_cpu_target_reports_every_program_of_both_stages_as_json(tiny_model):
    report, _ = cpu_report(tiny_model)
    assert report["fits"] is True
    names = [p["name"] for p in report["programs"]]
    assert names == [
        "sft/optimizer_init",
        "sft/optimizer_update",
        "sft/train_step",
        "rl/optimizer_init",
        "rl/optimizer_update",
        "rl/rollout",
        "rl/reference_logprobs",
        "rl/train_step",
    ]
    assert report["chips"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # 4 frames of 56 x 56 pixels: 2 temporal patches x 4 x 4 patches; 8 vision tokens + 16 text.
    assert report["largest_example"]["patches"] == 32
    assert report["largest_example"]["prompt_tokens"] == 24
    for p in report["programs"]:
        # The peak: the buffer assignment's total (on CPU the memory analysis' sum, to within
        # rounding of the report) plus the state resident beside the program.
        analysed = p["arguments_gib"] + p["outputs_gib"] - p["aliased_gib"] + p["temporaries_gib"]
        assert p["assigned_gib"] == pytest.approx(analysed, rel=1e-3)
        assert p["peak_gib"] == pytest.approx(p["assigned_gib"] + p["resident_outside_gib"])
        # What lives at the program's peak, from the CPU compiler's buffer assignment.
        sizes = [b["gib"] for b in p["peak_buffers"]]
        assert sizes and all(s > 0 for s in sizes) and sizes == sorted(sizes, reverse=True)
    step = {p["name"]: p for p in report["programs"]}
    assert step["rl/train_step"]["flops"] > step["rl/reference_logprobs"]["flops"] > 0
    # The RL step: rollout of each micro-batch, reference log-probs, one update.
    assert report["step_flops"]["rl"] == pytest.approx(
        2 * step["rl/rollout"]["flops"]
        + step["rl/reference_logprobs"]["flops"]
        + step["rl/train_step"]["flops"]
    )


def test_does_not_fit_a_chip_too_small_and_exits_1(tiny_model):
    code, out, _ = run_in_process(
        [
            *TINY,
            f"--config.model.path={tiny_model}",
            "--config.rl.steps=0",
            "--topology=cpu",
            "--memory_gib=0.0001",
            "--json",
        ]
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and report["fits"] is False
    # The limit is a whole number of bytes (107,374): equal to 1e-4 GiB within 2e-6.
    assert report["chip_memory_gib"] == pytest.approx(0.0001, rel=1e-4)
    step = report["programs"][-1]
    assert step["name"] == "sft/train_step" and step["peak_gib"] > 0.0001
    assert step["fits"] is False


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--topology=v9z:1x1"], "unknown TPU generation"),
        (["--topology=b200x8"], "unknown topology"),
        (["--topology=cpu", "--config.data.no_such_key=1"], "no_such_key"),
        (["--topology=cpu", "--config.model.path=", "--config.model.shape=Qwen3-VL"], "Qwen3-VL"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_model, extra, words):
    code, out, err = run_in_process([*TINY, f"--config.model.path={tiny_model}", *extra])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err


def _tpu_env() -> dict[str, str]:
    """The environment of a subprocess that compiles for a TPU slice with libtpu on this host."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "TPU_SKIP_MDS_QUERY": "1",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
        "XLA_FLAGS": QUICK_COMPILE,  # one CPU device; the TPU compiler ignores it
    }


def _fit_subprocess(args, tiny_model):
    return subprocess.run(
        [sys.executable, "-m", "jaxvrl.fit", *TINY, f"--config.model.path={tiny_model}", *args],
        cwd=ROOT,
        env=_tpu_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed (pip install -r requirements-fit.txt)",
)


@functools.cache
def tpu_rl_report(tiny_model: str) -> tuple[dict, str]:
    """The fit check's JSON report and stdout for the tiny RL stage on v5p:2x2x1, compiled once
    per test process: test_fit, test_fit_hlo_cost and test_fit_predict read it (conftest runs
    the three files in one process)."""
    done = _fit_subprocess(["--config.sft.steps=0", "--topology=v5p:2x2x1", "--json"], tiny_model)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


@needs_libtpu
def test_tpu_slice_compiles_every_program_and_reports_json(tiny_model):
    report, _ = tpu_rl_report(tiny_model)
    assert report["fits"] is True and report["chips"] == 4 and report["chip"] == "TPU v5p"
    assert [p["name"] for p in report["programs"]] == [
        "rl/optimizer_init",
        "rl/optimizer_update",
        "rl/rollout",
        "rl/reference_logprobs",
        "rl/train_step",
    ]
    assert all(p["xla_flops_per_chip"] is not None for p in report["programs"][1:])
    # The peak counts the TPU compiler's buffer assignment in HBM, which holds no more than the
    # memory analysis' sum of arguments, outputs and temporaries (on TPU that sum counts more),
    # but for the assignment's few small scalars and constants (1 MiB allowed).
    for p in report["programs"]:
        analysed = p["arguments_gib"] + p["outputs_gib"] - p["aliased_gib"] + p["temporaries_gib"]
        assert 0 < p["assigned_gib"] <= analysed + 2**-10
        assert p["peak_gib"] == pytest.approx(p["assigned_gib"] + p["resident_outside_gib"])


@pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins.xla_cuda12") is None,
    reason="the CUDA compiler plugin is not installed (pip install -r requirements-fit.txt)",
)
def test_gpu_node_compiles_from_its_target_description(tiny_model):
    # The SFT stage (its two programs): the RL stage's four took twice as long to compile.
    done = _fit_subprocess(["--config.rl.steps=0", "--topology=h100x8", "--json"], tiny_model)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["fits"] is True and report["chips"] == 8 and report["chip"] == "H100 80GB"
    assert report["chip_memory_gib"] == 76
    step = report["programs"][-1]
    assert step["name"] == "sft/train_step" and step["arguments_gib"] > 0


@needs_libtpu
def test_tpu_compiler_refusal_is_reported_as_not_fitting(tiny_model):
    # SFT on 8 sequences of 131,072 tokens with the dense attention: its scores alone are
    # hundreds of GiB per v5e chip (16 GiB), so the TPU compiler refuses the step. (xla_flash
    # fits it in 1.84 GiB: one key block's scores at a time.)
    done = _fit_subprocess(
        [
            "--config.model.attention=dense",
            "--config.rl.steps=0",
            "--config.train.micro_batches=1",
            "--config.data.token_buckets=(131072,)",
            "--text_tokens=130000",
            "--topology=v5e:2x2",
            "--json",
        ],
        tiny_model,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["fits"] is False and report["chip_memory_gib"] == 16
    step = report["programs"][-1]
    assert step["name"] == "sft/train_step" and "refused" in step
    assert step["needed_gib"] > step["available_gib"] > 15
    # The assignment's total is the figure the refusal quotes (which rounds to 0.01 GiB).
    assert step["assigned_gib"] == pytest.approx(step["needed_gib"], abs=0.01)
    # Why: the largest buffer of the assignment the compiler tried is the attention scores over
    # the 131,072 keys, the op that made it named.
    largest = step["peak_buffers"][0]
    assert largest["gib"] > 16 and "131072]" in largest["shape"], step["peak_buffers"]
    assert "dot_general" in largest["op"]
    assert "largest buffers at the peak of sft/train_step" in done.stdout

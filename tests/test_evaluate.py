"""Evaluation end to end: a tiny random model generates on tiny files of every record format
(written here, with the synthetic videos), the predictions re-scored with `score` give the
evaluation's own numbers, and the report's table and plots are written."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import demo
from jaxvrl import evaluate, policy, run_plan
from jaxvrl.data import synthetic
from jaxvrl.eval import report, runner
from jaxvrl.rollout.sampler import Sampler

MC = "multiple choice"


def video_r1(i, video, task, problem_type=MC, solution="<answer>A</answer>"):
    return {
        "problem_id": f"q{i}",
        "problem": "What happens to the square?",
        "data_type": "video",
        "problem_type": problem_type,
        "options": ["A. grows", "B. shrinks"] if problem_type == MC else [],
        "solution": solution,
        "path": video,
        "question_type": task,
    }


def write_benchmark_files(root: str) -> dict[str, str]:
    """One small file per format, all on the synthetic held-out videos."""
    v0, v1 = "videos/eval_0000.mp4", "videos/eval_0001.mp4"
    vsi = [
        video_r1(0, v0, "route_planning"),
        video_r1(1, v1, "object_counting", "regression", "<answer>3</answer>"),
        video_r1(2, v0, "obj_appearance_order", solution="<answer>B</answer>"),
        video_r1(3, "videos/missing.mp4", "route_planning"),  # skipped: missing_media
        {"problem_id": "q4", "problem": "no solution", "data_type": "video"},  # malformed
    ]
    frames = os.path.join(root, "got", "seq1")
    os.makedirs(frames, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(frames, f"{i:08d}.jpg"))
    seed = {
        "sample_id": "s1", "question": "What next?", "choice_a": "cut", "choice_b": "wash",
        "choice_c": "stir", "choice_d": "pour", "golden_choice_idx": "A", "task_level": "L1",
        "task_progress_metadata": [{"narration": "x"}], "video_basename": "eval_0000.mp4",
        "current_observation_basename": "squares_0000.png", "video_source": "",
    }  # fmt: skip
    files = {
        "vsibench.json": vsi,
        "mvbench.json": [video_r1(0, v0, "action_sequence"), video_r1(1, v1, "fine_grained")],
        "tempcompass.json": [video_r1(0, "videos/missing.mp4", "speed")],
        "charades.json": {
            "eval_0000": {"duration": 2.0, "timestamps": [[0.5, 1.5]], "sentences": ["grows"]},
            "eval_0001": {"duration": 2.0, "timestamps": [[0.0, 1.0]], "sentences": ["dims"]},
        },
        "nextgqa.json": [
            {
                "id": "g1",
                "video": v0,
                "question": "what changes",
                "options": ["(A) x", "(B) y"],
                "duration": 2.0,
                "glue": [[0.5, 1.0], [0.8, 1.5]],
                "answer": "(A)",
                "type": "TN",
            },
        ],  # fmt: skip
        "got10k.json": [{"path": "got/seq1", "object": "square", "gt": [[0.1, 0.1, 0.5, 0.5]] * 8}],
        "validation_L1.jsonl": [seed],
    }
    paths = {}
    for name, content in files.items():
        path = os.path.join(root, name)
        with open(path, "w") as f:
            if name.endswith(".jsonl"):
                f.write("\n".join(json.dumps(r) for r in content) + "\n")
            else:
                json.dump(content, f)
        paths[name] = path
    return paths


pytestmark = pytest.mark.slow  # about 70 s on 2 CPU cores (six benchmarks generated twice)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval_set"))
    config = demo.get_config(root)
    config.data.synthetic.update(num_videos=2, num_images=2, num_eval_videos=2)
    synthetic.ensure_from_config(config)
    paths = write_benchmark_files(root)
    config.eval.files = ",".join(
        [
            f"vsibench={paths['vsibench.json']}",
            f"mvbench={paths['mvbench.json']}",
            f"tempcompass={paths['tempcompass.json']}",  # every video missing: an error entry
            f"charades_sta={paths['charades.json']}",
            paths["nextgqa.json"],  # a bare path: its format's benchmark
            f"got10k={paths['got10k.json']}",
            f"seed_bench_r1={paths['validation_L1.jsonl']}",
        ]
    )
    config.data.record_options.update(
        charades_video="videos/{vid}.mp4",
        seed_bench_video="videos/{video_basename}",
        seed_bench_image="images/{current_observation_basename}",
    )
    config.eval.batch_size = 4
    config.eval.max_new_tokens = 12
    config.data.token_buckets = (256, 384)
    config.data.patch_buckets = (512, 1024)
    model, tokenizer, mesh = policy.load_model_for(config)
    sampler = Sampler(model, mesh=mesh, tokenizer=tokenizer, config=run_plan.rollout_config(config))
    suite = runner.load_suite(config)
    workdir = str(tmp_path_factory.mktemp("run"))
    _, state = nnx.split(model)
    results = [
        runner.evaluate_suite(state, sampler, config, suite, step, workdir) for step in (0, 5)
    ]
    return workdir, paths, results


def test_every_benchmark_is_generated_scored_and_written(evaluated):
    workdir, _, (result, _) = evaluated
    counts = {n: b.get("count") for n, b in result["benchmarks"].items()}
    assert counts == {"vsibench": 3, "mvbench": 2, "tempcompass": None, "charades_sta": 2,
                      "nextgqa": 1, "got10k": 1, "seed_bench_r1": 1}  # fmt: skip
    assert result["benchmarks"]["vsibench"]["skipped"] == {
        "malformed_record": 1,
        "missing_media": 1,
    }
    assert "tempcompass.json" in result["benchmarks"]["tempcompass"]["error"]
    vsi = result["benchmarks"]["vsibench"]["metrics"]
    for key in ("accuracy", "mra", "video_r1_avg", "macro_avg", "task/object_counting"):
        assert 0.0 <= vsi[key] <= 1.0, key
    grounding = result["benchmarks"]["charades_sta"]["metrics"]
    assert set(grounding) == {"miou", "r@0.3", "r@0.5", "r@0.7", "unparseable"}
    assert os.path.isfile(os.path.join(workdir, "eval", "0.json"))
    with open(os.path.join(workdir, "predictions", "0", "charades_sta.jsonl")) as f:
        rows = f.readlines()
    assert [json.loads(r)["id"] for r in rows] == ["eval_0000#0", "eval_0001#0"]


@pytest.mark.parametrize(
    "name,file",
    [("vsibench", "vsibench.json"), ("mvbench", "mvbench.json"), ("charades_sta", "charades.json"),
     ("nextgqa", "nextgqa.json"), ("got10k", "got10k.json"),
     ("seed_bench_r1", "validation_L1.jsonl")],
)  # fmt: skip
def test_rescoring_the_predictions_gives_the_evaluation_numbers(evaluated, capsys, name, file):
    workdir, paths, (result, _) = evaluated
    predictions = os.path.join(workdir, "predictions", "0", f"{name}.jsonl")
    argv = ["score", f"--benchmark={name}", f"--records={paths[file]}",
            f"--predictions={predictions}", "--json"]  # fmt: skip
    assert evaluate.cli(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    own = result["benchmarks"][name]
    assert last["count"] == own["count"]
    assert last["metrics"] == own["metrics"]


def test_report_table_holds_the_evaluated_numbers_and_plots_exist(evaluated):
    workdir, _, (first, second) = evaluated
    out = report.write_report(workdir)
    with open(out["markdown"]) as f:
        text = f.read()
    miou = [first, second]
    cells = " | ".join(f"{r['benchmarks']['charades_sta']['metrics']['miou']:.3f}" for r in miou)
    assert f"| charades_sta | miou | {cells} |" in text
    assert "| step 0 | step 5 |" in text
    names = {os.path.basename(p) for p in out["images"]}
    assert {"vsibench.png", "vsibench_tasks.png", "charades_sta_iou.png", "got10k_iou.png"} <= names
    for path in out["images"]:
        assert os.path.getsize(path) > 1000, path

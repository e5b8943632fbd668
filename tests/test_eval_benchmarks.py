"""Every benchmark family's scorer and aggregation against hand-computed values, the benchmark
files' readers (counted skips, wrong-format errors) and the `score` command.
Tolerance 1e-12 (means of a few floats)."""

import json

import pytest

from configs import base
from jaxvrl import evaluate
from jaxvrl.eval import benchmarks
from jaxvrl.eval.references import FormatError, Reference, read_references


def ref(i, group="", **truth) -> Reference:
    return Reference(id=str(i), key=f"f:{i}", truth=truth, group=group)


def run(name, pairs):
    bench = benchmarks.get(name)
    return bench.aggregate([bench.score(r, text) for r, text in pairs])


def test_registry_lists_every_benchmark_of_the_config():
    assert tuple(benchmarks.names()) == base.BENCHMARKS
    assert set(base.eval_config().per_benchmark) == set(base.BENCHMARKS)


def test_video_r1_scoring_by_problem_type():
    mc = dict(answer="B", problem_type="multiple_choice")
    num = dict(answer="3.5", problem_type="numerical")
    pairs = [
        (ref(0, **mc), "<think>hm</think><answer>B</answer>"),
        (ref(1, **mc), "<answer>C</answer>"),
        (ref(2, **mc), "B"),  # no tag: the whole response is compared (Video-R1), unparseable
        (ref(3, **num), "<answer>3.50</answer>"),
        (ref(4, **num), "<answer>4</answer>"),  # decimal mark differs from the truth's
        (ref(5, **num), "<answer>3.5 m</answer>"),  # not a plain number
        (ref(6, answer="10", problem_type="regression"), "<answer>7.6</answer>"),
    ]
    m = run("video_r1", pairs)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["mra"] == pytest.approx(0.6)  # error 0.24 < 1 - theta for theta 0.50 ... 0.75
    assert m["unparseable"] == pytest.approx(2 / 7)  # no tag; "3.5 m" is not a number


def test_mmvu_keeps_multiple_choice_and_sub_tasks_are_reported():
    pairs = [
        (ref(0, "Art", answer="A", problem_type="multiple_choice"), "<answer>A</answer>"),
        (ref(1, "Art", answer="A", problem_type="multiple_choice"), "<answer>B</answer>"),
        (ref(2, "Law", answer="C", problem_type="multiple_choice"), "<answer>C</answer>"),
    ]
    m = run("mvbench", pairs)
    assert m["task/Art"] == 0.5 and m["task/Law"] == 1.0
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert benchmarks.get("mmvu").problem_types == ("multiple_choice",)


def test_vsibench_accuracy_mra_video_r1_average_and_official_macro_average():
    mc = dict(problem_type="multiple_choice")
    na = dict(problem_type="regression")
    pairs = [
        (ref(0, "route_planning", answer="A", **mc), "<answer>A</answer>"),
        (ref(1, "obj_appearance_order", answer="B", **mc), "<answer>C</answer>"),
        (ref(2, "object_counting", answer="10", **na), "<answer>7.6 chairs</answer>"),
        (ref(3, "room_size_estimation", answer="20", **na), "It is 20 or so"),  # no tag
        (ref(4, "object_rel_direction_easy", answer="A", **mc), "<answer>A</answer>"),
        (ref(5, "object_rel_direction_hard", answer="B", **mc), "<answer>C</answer>"),
    ]
    m = run("vsibench", pairs)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["mra"] == pytest.approx(0.3)  # (0.6 + 0) / 2
    assert m["video_r1_avg"] == pytest.approx(0.4)
    assert m["task/object_counting"] == pytest.approx(0.6)
    # Tasks: route 1, order 0, counting 0.6, room 0, relative direction (1 + 0) / 2.
    assert m["macro_avg"] == pytest.approx((1 + 0 + 0.6 + 0 + 0.5) / 5)
    assert m["unparseable"] == pytest.approx(1 / 6)


def test_vsibench_has_no_macro_average_when_records_lack_the_task():
    pairs = [(ref(0, answer="A", problem_type="multiple_choice"), "<answer>A</answer>")]
    assert "macro_avg" not in run("vsibench", pairs)


def test_temporal_grounding_miou_and_recalls_with_unparseable_inverted_and_empty_spans():
    truth = dict(span=[2.0, 6.0])
    pairs = [
        (ref(0, **truth), "<answer>4 to 8</answer>"),  # IoU 2 / 6
        (ref(1, **truth), "<think>0.0 to 1.0?</think><answer>2.0 to 6.0</answer>"),  # 1
        (ref(2, **truth), "<answer>6.0 to 2.0</answer>"),  # inverted: 0
        (ref(3, **truth), "<answer>3.0 to 3.0</answer>"),  # zero length: 0
        (ref(4, **truth), "<answer>the middle</answer>"),  # unparseable: 0
    ]
    m = run("charades_sta", pairs)
    assert m["miou"] == pytest.approx((1 / 3 + 1) / 5)
    assert (m["r@0.3"], m["r@0.5"], m["r@0.7"]) == (0.4, 0.2, 0.2)
    assert m["unparseable"] == pytest.approx(0.2)
    assert run("activitynet_grounding", pairs) == m


def test_nextgqa_accuracy_and_iou_of_merged_overlapping_intervals():
    truth = dict(letter="C", glue=[[1.0, 3.0], [2.0, 5.0]])  # merged: (1, 5)
    pairs = [
        # (0, 2) + (4, 6) against (1, 5): intersection 2, union 6.
        (ref(0, "TN", **truth), "<answer>C</answer><glue>[(0.0, 2.0), (4.0, 6.0)]</glue>"),
        (ref(1, "TN", **truth), "<answer>(B)</answer>"),
        (ref(2, "CW", **truth), "no tags at all"),
    ]
    m = run("nextgqa", pairs)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["miou"] == pytest.approx(1 / 9)
    assert m["unparseable"] == pytest.approx(1 / 3)
    assert m["task/TN"] == 0.5 and m["task/CW"] == 0.0


def test_got10k_overlap_is_the_mean_over_videos_of_their_mean_box_iou():
    truth = [[0, 0, 2, 2], [0, 0, 1, 1]]
    pairs = [
        (ref(0, boxes=truth, video="a"), "<answer>[[1, 1, 3, 3], [0, 0, 1, 1]]</answer>"),
        (ref(1, boxes=truth, video="a"), "<answer>[[1, 1, 3, 3]]</answer>"),  # one box short
        (ref(2, boxes=truth, video="b"), f"<answer>{truth}</answer>"),
    ]
    m = run("got10k", pairs)
    # video a: (4/7 + 0) / 2, video b: 1.
    assert m["overlap"] == pytest.approx((2 / 7 + 1) / 2)
    assert m["unparseable"] == pytest.approx(1 / 3)


def test_seed_bench_r1_first_character_of_the_answer_per_level():
    pairs = [
        (ref(0, "L1", letter="A"), "<answer>A. pick up the knife</answer>"),
        (ref(1, "L1", letter="A"), "<answer>B</answer><answer>A</answer>"),
        (ref(2, "L2", letter="A"), "A"),
        (ref(3, "L2", letter="A"), "<answer></answer>"),
    ]
    m = run("seed_bench_r1", pairs)
    assert m["accuracy"] == 0.25
    assert m["level/L1"] == 0.5 and m["level/L2"] == 0.0
    assert m["unparseable"] == 0.5


# ------------------------------------------------------------------------------------------------
# Files.


def video_r1_record(i, **kw):
    record = {
        "problem_id": i,
        "problem": "How many chairs?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. 1", "B. 2"],
        "solution": "<answer>A</answer>",
        "path": "./v.mp4",
    }
    record.update(kw)
    return record


def test_unreadable_records_are_skipped_and_counted(tmp_path):
    path = tmp_path / "vsi.json"
    records = [
        video_r1_record(0, question_type="route_planning"),
        video_r1_record(1, solution=None),
        "not an object",
        video_r1_record(0),
    ]
    records[1].pop("solution")
    path.write_text(json.dumps(records))
    refs, skipped = read_references([str(path)], "video_r1", "vsibench")
    assert [r.id for r in refs] == ["0"] and refs[0].group == "route_planning"
    assert refs[0].key == f"{path}:0"
    assert skipped == {"malformed_record": 2, "duplicate_id": 1}


def test_a_file_in_the_wrong_format_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "charades.json"
    path.write_text(
        json.dumps({"v1": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["x"]}})
    )
    with pytest.raises(FormatError, match=rf"{path}.*'problem'.*vsibench"):
        read_references([str(path)], "video_r1", "vsibench")
    refs, _ = read_references([str(path)], "charades_sta", "charades_sta")
    assert [(r.id, r.key) for r in refs] == [("v1#0", f"{path}:v1#0")]


def test_seed_bench_level_comes_from_the_file_name_when_records_lack_it(tmp_path):
    path = tmp_path / "validation_L2.jsonl"
    row = {"sample_id": "s1", "question": "next?", "golden_choice_idx": "B",
           "current_observation_basename": "x.jpg"}  # fmt: skip
    path.write_text(json.dumps(row) + "\n{broken\n")
    refs, skipped = read_references([str(path)], "seed_bench_r1", "seed_bench_r1")
    assert refs[0].group == "L2" and refs[0].truth == {"letter": "B"}
    assert skipped["malformed_record"] == 1


def test_score_command_prints_the_metrics_as_json(tmp_path, capsys):
    records = tmp_path / "mvbench.json"
    records.write_text(json.dumps([video_r1_record(i, solution=f"<answer>{a}</answer>")
                                   for i, a in enumerate("ABAB")]))  # fmt: skip
    predictions = tmp_path / "pred.jsonl"
    lines = [
        {"id": 0, "response": "<answer>A</answer>"},
        {"id": "1", "response": "<answer>A</answer>"},
        {"id": 2, "response": "<answer>A</answer>"},
        {"id": 99, "response": "<answer>A</answer>"},
    ]
    predictions.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    assert evaluate.cli(["score", "--benchmark=mvbench", f"--records={records}",
                         f"--predictions={predictions}", "--json"]) == 0  # fmt: skip
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["benchmark"] == "mvbench" and last["count"] == 3
    assert last["metrics"]["accuracy"] == pytest.approx(2 / 3)
    result = evaluate.score_files("mvbench", str(records), str(predictions))
    assert result["skipped"] == {"no_prediction": 1, "unknown_id": 1, "unreadable_prediction": 1}

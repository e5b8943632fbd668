"""Record readers for the three families, from small files written here."""

import json

import pytest

from jaxvrl.data import records as R

KNOWN = ["multiple_choice", "numerical", "ocr", "free_form", "regression",
         "temporal_grounding", "grounded_qa", "tracking"]  # fmt: skip


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return str(path)


VIDEO_R1 = [
    {
        "problem_id": 7,
        "problem": "Which way does it go?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. left", "B. right"],
        "process": "<think>It goes left.</think>",
        "solution": "<answer>A</answer>",
        "path": "./clips/a.mp4",
        "data_source": "test",
    },
    {
        "problem_id": 8,
        "problem": "How many?",
        "data_type": "image",
        "problem_type": "numerical",
        "options": [],
        "solution": "<answer>3</answer>",
        "path": "images/b.png",
        "data_source": "test",
    },
]


def test_video_r1_records_become_examples(tmp_path):
    examples, errors = R.load_examples(write_json(tmp_path / "r1.json", VIDEO_R1), None, KNOWN)
    assert errors == []
    video, image = examples
    assert (video.uid, video.data_type, video.problem_type) == ("7", "video", "multiple choice")
    assert video.options == ("A. left", "B. right")
    assert video.process == "<think>It goes left.</think>"
    assert video.media == (R.Media("video", "./clips/a.mp4"),)
    assert image.media == (R.Media("image", "images/b.png"),)
    assert image.solution == "<answer>3</answer>" and image.process == ""
    assert R.resolve_path(video.media[0].path, "/data") == "/data/clips/a.mp4"


def test_charades_sta_gives_one_example_per_sentence(tmp_path):
    raw = {"V1": {"duration": 30.5, "timestamps": [[1.0, 5.25], [10, 20]],
                  "sentences": ["A person opens a door. ", "they sit down"]}}  # fmt: skip
    examples, errors = R.load_examples(write_json(tmp_path / "c.json", raw), None, KNOWN)
    assert errors == []
    assert [e.uid for e in examples] == ["V1#0", "V1#1"]
    first = examples[0]
    assert first.problem_type == "temporal grounding"
    # VideoChat-R1 grpo_tasks.py:564-566: strip, lower-case, drop one trailing full stop.
    assert first.problem == "a person opens a door"
    assert examples[1].problem == "they sit down"
    assert first.solution == "<answer>1.00 to 5.25</answer>"
    assert first.media == (R.Media("video", "V1.mp4"),)
    assert first.extra == {"duration": 30.5, "timestamp": [1.0, 5.25]}


def test_nextgqa_keeps_options_answer_and_glue(tmp_path):
    raw = [{"id": "q1", "video": "123", "question": "Why did the boy run?",
            "options": ["(A) rain", "(B) dog", "(C) bus"], "duration": 40,
            "glue": [[2.5, 6.0]], "answer": "(C)"}]  # fmt: skip
    (example,), errors = R.load_examples(write_json(tmp_path / "n.json", raw), None, KNOWN)
    assert errors == []
    assert example.problem_type == "grounded qa"
    assert example.media == (R.Media("video", "123.mp4"),)
    assert example.solution == "<answer>C</answer>"
    assert example.extra["glue"] == [[2.5, 6.0]]


def test_got10k_uses_seven_frames_and_eight_boxes(tmp_path):
    boxes = [[0.1 * i, 0.1, 0.1 * i + 0.2, 0.5] for i in range(8)]
    raw = [{"path": "train/GOT-10k_0001", "object": "zebra", "gt": boxes}]
    (example,), errors = R.load_examples(write_json(tmp_path / "g.json", raw), None, KNOWN)
    assert errors == []
    assert example.problem_type == "tracking"
    assert example.media == (R.Media("video", "train/GOT-10k_0001", num_frames=7),)
    assert json.loads(example.solution[len("<answer>") : -len("</answer>")]) == boxes
    assert example.extra["start"] == boxes[0]  # the initial box the prompt gives


def test_got10k_initial_box_keeps_the_numbers_as_written(tmp_path):
    boxes = [[0, 0.25, 1, 0.5]] * 8  # ints stay ints: the prompt shows str(gt[0])
    raw = [{"path": "train/GOT-10k_0002", "object": "cat", "gt": boxes}]
    (example,), _ = R.load_examples(write_json(tmp_path / "g.json", raw), None, KNOWN)
    assert str(example.extra["start"]) == "[0, 0.25, 1, 0.5]"


SEED_EVAL = {
    "sample_id": "s1", "task_goal": "make tea", "question": "What next?",
    "choice_a": "boil", "choice_b": "pour", "choice_c": "stir", "choice_d": "drink",
    "golden_choice_idx": "B", "video_source": "Ego4D", "video_basename": "s1.mp4",
    "current_observation_basename": "s1.png", "task_progress_metadata": [{"step": 1}],
    "task_level": "L1",
}  # fmt: skip


def test_seed_bench_r1_puts_the_progress_clip_before_the_current_observation(tmp_path):
    no_clip = {**SEED_EVAL, "sample_id": "s2", "current_observation_basename": "s2.png"}
    no_clip["task_progress_metadata"] = []
    path = write_jsonl(tmp_path / "s.jsonl", [SEED_EVAL, no_clip])
    (with_clip, image_only), errors = R.load_examples(path, None, KNOWN)
    assert errors == []
    assert with_clip.media == (
        R.Media("video", "videos/Ego4D/s1.mp4"),
        R.Media("image", "images/Ego4D/s1.png"),
    )
    assert with_clip.data_type == "video" and image_only.data_type == "image"
    assert image_only.media == (R.Media("image", "images/Ego4D/s2.png"),)
    assert with_clip.options == ("A. boil", "B. pour", "C. stir", "D. drink")
    assert with_clip.solution == "<answer>B</answer>"


def test_seed_bench_r1_training_rows_sample_three_negatives_reproducibly(tmp_path):
    row = {k: v for k, v in SEED_EVAL.items() if not k.startswith("choice")}
    row.update(answer="pour", negative_answers=["boil", "stir", "drink", "wash", "cut"])
    path = write_jsonl(tmp_path / "train.jsonl", [row])
    (a,), _ = R.load_examples(path, R.RecordOptions(seed=3), KNOWN)
    (b,), _ = R.load_examples(path, R.RecordOptions(seed=3), KNOWN)
    assert a.options == b.options and len(a.options) == 4
    texts = [o[3:] for o in a.options]
    assert "pour" in texts and len(set(texts)) == 4
    assert set(texts) - {"pour"} <= {"boil", "stir", "drink", "wash", "cut"}
    letter = "ABCD"[texts.index("pour")]
    assert a.solution == f"<answer>{letter}</answer>"


def test_malformed_records_and_unknown_problem_types_are_reported_not_raised(tmp_path):
    bad = [
        VIDEO_R1[0],
        {"problem": "no type", "data_type": "video", "solution": "<answer>A</answer>", "path": "x"},
        {**VIDEO_R1[0], "data_type": "audio"},
        {**VIDEO_R1[0], "options": []},  # multiple choice without options
        {**VIDEO_R1[0], "problem_type": "riddle"},
        "not an object",
    ]
    path = write_json(tmp_path / "bad.json", bad)
    examples, errors = R.load_examples(path, None, KNOWN)
    assert len(examples) == 1
    assert [e.origin for e in errors] == [f"{path}:{i}" for i in (1, 2, 3, 4, 5)]
    assert "missing field 'problem_type'" in errors[0].reason
    assert "data_type" in errors[1].reason
    assert "needs options" in errors[2].reason
    assert errors[3].reason == "unknown problem type 'riddle'"


def test_jsonl_lines_that_are_not_json_are_reported_with_their_line(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl", [SEED_EVAL, "{broken", {**SEED_EVAL, "sample_id": "x"}]
    )
    examples, errors = R.load_examples(path, None, KNOWN)
    assert len(examples) == 2
    assert errors[0].origin == f"{path}:1" and "malformed JSON" in errors[0].reason


def test_format_prefix_overrides_detection_and_files_combine(tmp_path):
    a = write_json(tmp_path / "a.json", VIDEO_R1)
    b = write_json(tmp_path / "b.json", [{"path": "f", "object": "cat", "gt": [[0, 0, 1, 1]] * 8}])
    examples, _ = R.load_examples(f"{a}, got10k:{b}", None, KNOWN)
    assert [e.source for e in examples] == ["video_r1", "video_r1", "got10k"]


def test_missing_record_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        R.load_examples(str(tmp_path / "nope.json"))


def test_problem_type_keys_are_snake_case():
    assert R.problem_type_key("multiple choice") == "multiple_choice"
    assert R.problem_type_key("OCR") == "ocr"
    assert R.problem_type_key("free-form") == "free_form"

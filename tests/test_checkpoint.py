"""The data-iterator state a process resumes from (jaxvrl.checkpoint.data_state_for_process):
its own with as many processes as wrote the checkpoint, else the same global position."""

import json

import pytest

from jaxvrl.checkpoint import data_state_for_process


def state(next_index: int, skips: dict[str, int] | None = None) -> dict:
    return {"parent": {"next_index": next_index}, "skip_counts": json.dumps(skips or {})}


def test_each_process_takes_its_own_state_when_the_count_is_unchanged():
    saved = {"processes": [state(6, {"corrupt_media": 1}), state(4)]}
    assert data_state_for_process(saved, 4, 2, 0) == saved["processes"][0]
    assert data_state_for_process(saved, 4, 2, 1) == saved["processes"][1]


def test_a_single_process_checkpoint_resumes_on_two_at_the_same_global_batch():
    # 3 global batches of 4 read: each of 2 processes starts at its block of batch 3.
    for saved in (state(12, {"corrupt_media": 2}), {"processes": [state(12)]}):
        for index in range(2):
            out = data_state_for_process(saved, 4, 2, index)
            assert out["parent"]["next_index"] == 6
    first = data_state_for_process(state(12, {"corrupt_media": 2}), 4, 2, 0)
    second = data_state_for_process(state(12, {"corrupt_media": 2}), 4, 2, 1)
    # The skip counts are kept once (process 0), so their sum over processes is unchanged.
    assert json.loads(first["skip_counts"]) == {"corrupt_media": 2}
    assert json.loads(second["skip_counts"]) == {}


def test_a_two_process_checkpoint_resumes_on_one():
    saved = {"processes": [state(6, {"corrupt_media": 1}), state(6, {"too_long": 2})]}
    out = data_state_for_process(saved, 4, 1, 0)
    assert out["parent"]["next_index"] == 12
    assert json.loads(out["skip_counts"]) == {"corrupt_media": 1, "too_long": 2}


def test_a_worker_pool_state_cannot_change_the_process_count():
    saved = {"processes": [{"parent": {"workers": []}, "skip_counts": "{}"}] * 2}
    with pytest.raises(ValueError, match="num_workers = 0"):
        data_state_for_process(saved, 4, 1, 0)

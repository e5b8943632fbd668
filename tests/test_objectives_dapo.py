"""DAPO's dynamic sampling and overlong shaping (jaxvrl/objectives/dapo.py, wired in scoring.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from demo_fixtures import QUICK_COMPILE, trainer_env
from model_fixtures import tiny_port
from test_train import REPO, short_overrides

from jaxvrl import steps
from jaxvrl.metrics import read_metrics
from jaxvrl.objectives import dapo, scoring
from jaxvrl.rollout.group_decode import FINISH_LENGTH, FINISH_STOP
from jaxvrl.rollout.sampler import Rollout
from model import parity

# ------------------------------------------------------------------------------------ overlong


def test_soft_overlong_penalty_is_zero_before_the_buffer_and_minus_factor_at_the_limit():
    # max 100 tokens, buffer 20: free up to 80, then linear to -1 at 100 (DAPO eq. 13).
    lengths = np.array([0, 79, 80, 85, 90, 99, 100, 120])
    got = dapo.soft_overlong_penalty(lengths, max_length=100, buffer=20)
    np.testing.assert_allclose(got, [0, 0, 0, -0.25, -0.5, -0.95, -1.0, -1.0], atol=1e-7)
    half = dapo.soft_overlong_penalty(lengths, max_length=100, buffer=20, factor=0.5)
    np.testing.assert_allclose(half, 0.5 * got, atol=1e-7)
    assert not dapo.soft_overlong_penalty(lengths, max_length=100, buffer=0).any()


# ---------------------------------------------------------------------------- dynamic sampling


def _candidate(drop, real=None):
    drop = np.asarray(drop, bool)
    real = np.ones(len(drop), bool) if real is None else np.asarray(real, bool)
    return dapo.Candidate(raw={"example_mask": real}, train={}, drop=drop | ~real)


def test_refill_rolls_out_until_the_kept_groups_fill_the_step():
    first = [_candidate([0, 1, 1, 0]), _candidate([1, 1, 1, 0])]  # 3 of 8 kept
    more = iter([_candidate([0, 0, 1, 1]), _candidate([0, 0, 0, 1]), _candidate([0, 0, 0, 0])])
    calls = []

    def roll_out_more(round_):
        calls.append(round_)
        return next(more)

    candidates = list(first)
    rounds = dapo.refill(candidates, roll_out_more, max_extra_rounds=5)
    assert rounds == 2 and calls == [0, 1]  # 3 + 2 + 3 = 8 kept after two extra rounds
    sel = dapo.select_rows(candidates, num_batches=2, rows=4)
    assert sel.kept_groups == 8 and sel.filler_rows == 0
    # Exactly the zero-variance groups are gone, the kept ones in rollout order.
    flat = [pick for picks in sel.picks for pick in picks]
    assert flat == [(0, 0), (0, 3), (1, 3), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert dapo.dropped_groups(candidates) == 2 + 3 + 2 + 1


def test_refill_stops_at_its_limit_and_fills_with_masked_dropped_rows():
    candidates = [_candidate([1, 1, 0, 1])]
    rounds = dapo.refill(candidates, lambda r: _candidate([1, 0, 1, 1]), max_extra_rounds=1)
    assert rounds == 1 and len(candidates) == 2
    sel = dapo.select_rows(candidates, num_batches=1, rows=4)
    assert sel.kept_groups == 2 and sel.filler_rows == 2
    assert sel.picks == [[(0, 2), (1, 1), (0, 0), (0, 1)]]


def test_refill_stops_when_the_data_runs_out_and_counts_no_filler_rows_as_dropped():
    candidates = [_candidate([1, 0, 1, 1], real=[1, 1, 0, 0])]  # two filler rows
    assert dapo.refill(candidates, lambda r: None, max_extra_rounds=3) == 0
    assert dapo.dropped_groups(candidates) == 1
    assert dapo.refill([_candidate([0, 0])], lambda r: 1 / 0, max_extra_rounds=3) == 0


def _source_batch():
    """The two-prompt (image row, video row) GRPO batch of test_steps, with its raw meta."""
    model = tiny_port("qwen2_vl")
    cfg = model.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")
    arrays = parity.port_arrays(cfg, inp)
    rng = np.random.default_rng(0)
    train = {
        "prompt_ids": inp.input_ids.astype(np.int32),
        "prompt_mask": inp.attention_mask.astype(bool),
        "prompt_positions": np.asarray(arrays["positions"], np.int32),
        "rope_deltas": np.asarray(arrays["deltas"], np.int32).reshape(-1),
        "vision": {k: np.asarray(v) for k, v in arrays["vision"].items()},
        "sample_to_prompt": np.array([0, 0, 0, 1, 1, 1], np.int32),
        "completion_ids": rng.integers(10, cfg.text.vocab_size, (6, 5)).astype(np.int32),
        "completion_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]] * 2, bool),
        "advantages": np.array([1.0, -1.0, 0.5, -0.5, 0.25, 0.0], np.float32),
        "sampler_logp": -rng.random((6, 5)).astype(np.float32),
    }
    raw = {
        "meta": {"grid_thw": [[list(g)] for _, g, _ in inp.items]},
        "example_mask": np.array([True, True]),
    }
    return model, raw, train


def test_assemble_lays_rows_of_two_rollouts_out_as_one_batch_with_their_own_vision():
    model, raw, train = _source_batch()
    n = train["vision"]["patches"].shape[0]
    # Each candidate keeps one of the two rows; together they hold the original batch.
    a = dapo.Candidate(raw=raw, train=train, drop=np.array([False, True]))
    b = dapo.Candidate(raw=raw, train=train, drop=np.array([True, False]))
    sel = dapo.select_rows([a, b], num_batches=1, rows=2)
    assert sel.picks == [[(0, 0), (1, 1)]]
    got = dapo.assemble([a, b], sel.picks[0], [False, False], model.config.vision, (n,))
    for key in ("prompt_ids", "prompt_mask", "prompt_positions", "rope_deltas", "sample_to_prompt"):
        np.testing.assert_array_equal(got[key], train[key], err_msg=key)
    for key in ("completion_ids", "completion_mask", "advantages"):
        np.testing.assert_array_equal(got[key], train[key], err_msg=key)
    for key, value in train["vision"].items():
        np.testing.assert_array_equal(got["vision"][key], value, err_msg=key)

    # Swapped rows: the image row's patches follow the video row's, each with its own grid.
    swapped = dapo.assemble([a, b], [(1, 1), (0, 0)], [False, True], model.config.vision, (n,))
    video = dapo._row_patches(raw, train["vision"], 1)[0]
    image = dapo._row_patches(raw, train["vision"], 0)[0]
    np.testing.assert_array_equal(swapped["vision"]["patches"][: len(video)], video)
    np.testing.assert_array_equal(
        swapped["vision"]["patches"][len(video) : len(video) + len(image)], image
    )
    # The masked row keeps its arrays but weighs nothing.
    assert not swapped["completion_mask"][3:].any() and not swapped["advantages"][3:].any()
    np.testing.assert_array_equal(swapped["completion_mask"][:3], train["completion_mask"][3:])


def test_a_masked_filler_row_adds_nothing_to_the_grpo_loss():
    """The loss of a batch whose second row is a masked filler equals the loss of the first row
    alone (float32; 1e-6 relative: only the batch composition differs)."""
    model, raw, train = _source_batch()
    n = train["vision"]["patches"].shape[0]
    cand = dapo.Candidate(raw=raw, train=train, drop=np.array([False, True]))
    settings = steps.LossSettings(kind="grpo", beta=0.0)
    with_filler = dapo.assemble([cand], [(0, 0), (0, 1)], [False, True], model.config.vision, (n,))
    out_filler = steps.micro_batch_loss(model, _jnp(with_filler), settings)
    only_first = dict(train)
    only_first["completion_mask"] = (
        train["completion_mask"] * (train["sample_to_prompt"] == 0)[:, None]
    )
    out_first = steps.micro_batch_loss(model, _jnp(only_first), settings)
    np.testing.assert_allclose(out_filler.total, out_first.total, rtol=1e-6)
    np.testing.assert_allclose(out_filler.denominator, out_first.denominator)
    assert float(out_filler.denominator) == 3.0  # the first row's three completions


def _jnp(batch):
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {kk: jnp.asarray(vv) for kk, vv in v.items()}
        elif v is not None:
            out[k] = jnp.asarray(v)
    return out


# -------------------------------------------------------------------------- scoring wiring


def _rollout(finish, lengths, texts):
    s = len(finish)
    m = 6
    mask = np.arange(m)[None, :] < np.asarray(lengths)[:, None]
    return Rollout(
        tokens=np.where(mask, 7, 0).astype(np.int32),
        logprobs=np.where(mask, -0.5, 0.0).astype(np.float32),
        mask=mask,
        lengths=np.asarray(lengths, np.int32),
        finish_reason=np.asarray(finish, np.int32),
        sample_to_prompt=np.repeat(np.arange(s // 2), 2).astype(np.int32),
        sample_index=np.tile(np.arange(2), s // 2).astype(np.int32),
        prompt_lengths=np.full(s, 3, np.int32),
        num_steps=np.int32(m),
        texts=tuple(texts),
    )


def _batch(p):
    return {
        "input_ids": np.ones((p, 3), np.int32),
        "attention_mask": np.ones((p, 3), np.int32),
        "positions": np.zeros((3, p, 3), np.int32),
        "rope_deltas": np.zeros(p, np.int32),
        "example_mask": np.ones(p, bool),
        "is_video": np.zeros(p, bool),
        "meta": {
            "uid": [f"u{i}" for i in range(p)],
            "solution": ["<answer>A</answer>"] * p,
            "problem_type": ["multiple choice"] * p,
        },
    }


GOOD = "<think>x</think><answer>A</answer>"
BAD = "<think>x</think><answer>B</answer>"


def _score(batch, rollout, settings):
    """The trainer's scoring of a rollout without companions: rewards -> advantages -> layout."""
    rewards = scoring.rewards(batch, rollout, [], settings)
    return scoring.scored(batch, rewards, scoring.advantages(rewards, settings))


def test_masking_truncated_completions_changes_exactly_their_tokens_weights():
    finish = [FINISH_STOP, FINISH_LENGTH, FINISH_LENGTH, FINISH_STOP]
    rollout = _rollout(finish, [3, 6, 6, 2], [GOOD, BAD, GOOD, BAD])
    settings = scoring.RLSettings(num_generations=2, temporal=False)
    scored = _score(_batch(2), rollout, settings)
    plain = scoring.training_batch(_batch(2), rollout, scored)
    masked = scoring.training_batch(_batch(2), rollout, scored, mask_truncated=True)
    changed = (plain["completion_mask"] != masked["completion_mask"]).any(axis=1)
    np.testing.assert_array_equal(changed, [False, True, True, False])
    assert not masked["completion_mask"][[1, 2]].any()
    np.testing.assert_array_equal(
        masked["completion_mask"][[0, 3]], plain["completion_mask"][[0, 3]]
    )
    assert not masked["sampler_logp"][[1, 2]].any()


def test_the_overlong_penalty_enters_the_group_reward_and_its_std():
    # Group 0: both right, lengths 3 and 6 of max 6 with a buffer of 2 -> penalties 0 and -1.
    # Group 1: both right and short -> all equal, std 0 (dropped by dynamic sampling).
    rollout = _rollout(
        [FINISH_STOP, FINISH_LENGTH, FINISH_STOP, FINISH_STOP], [3, 6, 2, 2], [GOOD] * 4
    )
    base = dict(num_generations=2, temporal=False, rewards=(("accuracy", 1.0),))
    settings = scoring.RLSettings(**base, max_completion_tokens=6, overlong_buffer=2)
    scored = _score(_batch(2), rollout, settings)
    assert scored["metrics"]["reward/overlong"] == pytest.approx(-0.25)
    assert scored["metrics"]["reward/total"] == pytest.approx(0.75)
    np.testing.assert_allclose(scored["group_std"], [0.5, 0.0])
    off = _score(_batch(2), rollout, scoring.RLSettings(**base))
    np.testing.assert_allclose(off["group_std"], [0.0, 0.0])
    assert "reward/overlong" not in off["metrics"]


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def dapo_run(small_demo_set, tmp_path_factory):
    """The shortened demo of test_train with dynamic sampling (one extra round), the overlong
    penalty and truncated completions masked."""
    root = small_demo_set
    workdir = str(tmp_path_factory.mktemp("dapo_run"))
    overrides = [
        *short_overrides(root, workdir),
        "--config.rl.dynamic_sampling.enabled=true",
        "--config.rl.dynamic_sampling.max_extra_rounds=1",
        "--config.rl.overlong.buffer=4",
        "--config.rl.overlong.mask_truncated=true",
    ]
    env = trainer_env(JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = QUICK_COMPILE  # one device, as a user's run
    result = subprocess.run(
        [sys.executable, "-m", "jaxvrl.train", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result


def test_a_run_with_dynamic_sampling_logs_dropped_groups_and_extra_rounds(dapo_run):
    workdir, _ = dapo_run
    rl = [r for r in read_metrics(workdir) if r.get("stage") == "rl"]
    assert len(rl) == 4
    for r in rl:
        assert 0 <= r["dynamic/extra_rounds"] <= 1
        assert 0 <= r["dynamic/kept_groups"] <= 4  # one micro-batch of 4 prompts
        assert r["dynamic/filled_fraction"] == pytest.approx(r["dynamic/kept_groups"] / 4)
        assert -1.0 <= r["reward/overlong"] <= 0.0
        # A step that was short of groups rolled out its extra round.
        if r["dynamic/kept_groups"] < 4:
            assert r["dynamic/extra_rounds"] == 1


def test_the_terminal_shows_stages_and_warnings_while_library_info_goes_to_the_log(dapo_run):
    workdir, result = dapo_run
    terminal = result.stdout + result.stderr
    # absl-formatted INFO lines ("I1202 07:09:10.79 ...") are what Orbax prints.
    info = [line for line in terminal.splitlines() if re.match(r"I\d{4} \d\d:", line)]
    assert not [line for line in info if "orbax" in line or "checkpoint" in line], info[:5]
    assert "stage sft: steps 1 to 3" in terminal and "stage rl: steps 4 to 7" in terminal
    with open(os.path.join(workdir, "train.log")) as f:
        log_text = f.read()
    assert "stage rl: steps 4 to 7" in log_text
    assert "orbax" in log_text.lower()  # the checkpoint library's INFO is kept in the file

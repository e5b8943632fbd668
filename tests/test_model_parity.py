"""The port's float32 logits equal transformers' on every input kind, every generation."""

import numpy as np
import pytest
from model_fixtures import tiny_checkpoint, tiny_port

from model import parity
from model.config import ModelConfig

# Float32 on both sides with the same math; differences come from summation order only, so we
# hold the port to the project tolerance of DESIGN.md section 7: 1e-4 x max |logit|.
TOLERANCE = 1e-4


# Qwen3.5 tied: test_qwen3_5_layer_patterns_match_transformers (its checkpoints are tied).
@pytest.mark.parametrize(
    ("generation", "tie"),
    [(g, t) for g in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") for t in (False, True)]
    + [("qwen3_5", False)],
    ids=lambda v: v if isinstance(v, str) else ("tied" if v else "untied"),
)
def test_logits_match_transformers_on_every_input_kind(generation, tie):
    directory, _ = tiny_checkpoint(generation, tie)
    rows = parity.compare(directory, TOLERANCE)
    every_kind = [
        "text",
        "image",
        "video",
        "image+video",
        "two videos",
        "batch of two, padded",
        "batch of two, left-padded",
    ]
    assert [r["input"] for r in rows] == every_kind  # every kind, in order
    assert list(parity.INPUT_NAMES) == every_kind
    for r in rows:
        assert r["rel_diff"] <= TOLERANCE, r


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_vision_features_reach_the_logits(generation):
    """Guards the parity test against a vision path that contributes nothing: shuffling the
    patches of the video must move the logits far beyond the parity tolerance."""
    model = tiny_port(generation)
    cfg = model.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "video")
    arrays = parity.port_arrays(cfg, inp)
    ids, mask = inp.input_ids, inp.attention_mask.astype(bool)
    base = np.asarray(model.logits(model(ids, arrays["positions"], mask, arrays["vision"])))
    shuffled = dict(arrays["vision"])
    shuffled["patches"] = shuffled["patches"][::-1].copy()
    moved = np.asarray(model.logits(model(ids, arrays["positions"], mask, shuffled)))
    assert np.abs(moved - base).max() > 100 * TOLERANCE * np.abs(base).max()


# For the tests of one structural setting (layer patterns, DeepStack taps): a video and the batch
# (an image row, a video row) padded on either side; all kinds run in the tests above.
FEW_INPUTS = ("video", "batch of two, padded", "batch of two, left-padded")


def _assert_few_inputs_match(path) -> None:
    """The checkpoint at `path` gives transformers' logits on FEW_INPUTS, each within TOLERANCE."""
    rows = parity.compare(str(path), TOLERANCE, names=FEW_INPUTS)
    assert [r["input"] for r in rows] == list(FEW_INPUTS)
    for r in rows:
        assert r["rel_diff"] <= TOLERANCE, r


def test_qwen3_deepstack_on_three_layers_listed_out_of_order_matches_transformers(tmp_path):
    """DeepStack's k-th listed merger takes the output of the k-th listed vision block, and the
    tapped blocks feed the decoder layers in depth order (transformers' loop): blocks [3, 0, 2]
    into 3 decoder layers, untied."""
    from model.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(
        tmp_path,
        "qwen3_vl",
        seed=3,
        num_layers=3,
        vision_overrides={"deepstack_visual_indexes": [3, 0, 2]},
    )
    _assert_few_inputs_match(tmp_path)


def test_qwen3_deepstack_features_reach_the_logits():
    """Guards the Qwen3-VL parity against a DeepStack path that contributes nothing: without its
    additions the logits at and after the video move far beyond the tolerance."""
    import model.qwen2_vl as qwen2_vl

    model = tiny_port("qwen3_vl")
    cfg = model.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "video")
    arrays = parity.port_arrays(cfg, inp)
    ids, mask = inp.input_ids, inp.attention_mask.astype(bool)
    embedded = model.embed(ids, arrays["vision"])
    assert isinstance(embedded, qwen2_vl.Embedded)
    assert embedded.deepstack.shape == (2, *ids.shape, cfg.text.hidden_size)
    is_vision = ids == cfg.video_token_id
    assert np.all(np.asarray(embedded.deepstack)[:, ~is_vision] == 0)
    base = np.asarray(model.logits(model.hidden_states(embedded, arrays["positions"], mask)))
    plain = np.asarray(model.logits(model.hidden_states(embedded.x, arrays["positions"], mask)))
    assert np.abs(plain - base).max() > 100 * TOLERANCE * np.abs(base).max()


@pytest.mark.parametrize(
    "layer_types",
    [
        ["full_attention", "linear_attention", "linear_attention"],  # no period: one group
        ["linear_attention"] * 3
        + ["full_attention"]
        + ["linear_attention"] * 3
        + ["full_attention"],  # Qwen3.5's own pattern, two groups of 4
    ],
    ids=["full-linear-linear", "3linear-full-x2"],
)
def test_qwen3_5_layer_patterns_match_transformers(tmp_path, layer_types):
    """Qwen3.5's hybrid decoder on several `layer_types` patterns, tied embeddings."""
    from model.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(
        tmp_path,
        "qwen3_5",
        seed=4,
        num_layers=len(layer_types),
        layer_types=layer_types,
        tie_word_embeddings=True,
    )
    _assert_few_inputs_match(tmp_path)


def test_qwen3_5_heads_rotating_in_full_match_transformers(tmp_path):
    """The demo's tiny Qwen3.5 attention (configs/demo.py): 8 heads of 16 dims, 4 KV heads, every
    dim rotating (partial_rotary_factor 1), behind a DeltaNet layer; a 2-layer tower."""
    from model.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(
        tmp_path, "qwen3_5", seed=5, heads=8, head_dim=16, rotary_fraction=1.0, vision_depth=2
    )
    cfg = ModelConfig.from_pretrained(str(tmp_path)).text
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rotary_dim) == (8, 4, 16, 16)
    _assert_few_inputs_match(tmp_path)


def test_qwen3_5_linear_attention_reaches_the_logits():
    """Guards the Qwen3.5 parity against DeltaNet layers that contribute nothing: zeroing their
    output projections moves the logits far beyond the tolerance."""
    model = tiny_port("qwen3_5")
    cfg = model.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "text")
    arrays = parity.port_arrays(cfg, inp)
    ids, mask = inp.input_ids, inp.attention_mask.astype(bool)
    base = np.asarray(model.logits(model(ids, arrays["positions"], mask)))
    for group in ("layer_0",):
        kernel = getattr(model.layers, group).linear_attn.out_proj.kernel
        kernel[...] = kernel[...] * 0
    moved = np.asarray(model.logits(model(ids, arrays["positions"], mask)))
    assert np.abs(moved - base).max() > 100 * TOLERANCE * np.abs(base).max()


def test_parity_cli_exits_nonzero_above_tolerance(capsys):
    directory, _ = tiny_checkpoint("qwen2_vl")
    assert parity.main([directory, "--tolerance", "1e-12", "--input", "text"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert parity.main([directory, "--input", "text", "--input", "video"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:3]] == [
        "text",
        "video",
    ]
    with pytest.raises(SystemExit):  # argparse: invalid choice
        parity.main([directory, "--input", "txt"])
    assert "invalid choice: 'txt'" in capsys.readouterr().err

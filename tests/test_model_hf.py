"""Hugging Face checkpoints in and out of the port (model/hf.py), against transformers (5.23).

Tiny random transformers checkpoints (model/tiny.py) of both generations are read in every form
the port accepts (hub or in-memory tensor keys, flat or nested config.json, tied embeddings, one
file or several with an index), written back, and compared tensor by tensor and logit by logit.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText

from model.config import ModelConfig
from model.hf import checkpoint_files, iter_safetensors, load_pretrained, normalise_key
from model.hf import save_pretrained as export
from model.parity import INPUT_NAMES, build_inputs, compare, port_arrays, torch_logits
from model.tiny import make_tiny_checkpoint, tiny_hf_config

# The port and transformers both run in float32 with highest-precision matmuls; the remaining
# differences are summation order, a few ulps of the largest logit. 1e-4 x max|logit| is the
# project's parity tolerance (issue 2) and leaves two orders of magnitude of margin.
LOGIT_TOLERANCE = 1e-4

# Checkpoint forms. Together they cover both generations x both tensor-key layouts x both
# config.json forms, tied and untied embeddings, and one file or shards with an index.
CASES = {
    "qwen2_vl-hub-flat": dict(generation="qwen2_vl"),
    "qwen2_vl-in_memory-nested-tied-sharded": dict(
        generation="qwen2_vl",
        in_memory_keys=True,
        nested=True,
        tie_word_embeddings=True,
        max_shard_size="50KB",
    ),
    "qwen2_5_vl-hub-nested-tied": dict(
        generation="qwen2_5_vl", nested=True, tie_word_embeddings=True
    ),
    "qwen2_5_vl-in_memory-flat-sharded": dict(
        generation="qwen2_5_vl", in_memory_keys=True, max_shard_size="50KB"
    ),
    # Qwen3-VL: nested config.json and its published key layout (model.language_model.*).
    "qwen3_vl-published-tied": dict(generation="qwen3_vl", tie_word_embeddings=True),
    "qwen3_vl-published-sharded": dict(generation="qwen3_vl", max_shard_size="50KB"),
    # Qwen3.5: the hybrid decoder's DeltaNet tensors (conv1d, A_log, dt_bias, gated norm).
    "qwen3_5-published": dict(generation="qwen3_5", num_layers=4),
}
# The tiny models hold about 0.8 MB of float32 tensors: 64 KB shards give an index and ~12 files.
EXPORT_SHARD_BYTES = 64 * 1024
# One exported checkpoint per generation for the transformers logit checks: tied and untied.
LOGIT_CASES = [
    "qwen2_vl-in_memory-nested-tied-sharded",
    "qwen2_5_vl-in_memory-flat-sharded",
    "qwen3_vl-published-tied",
    "qwen3_vl-published-sharded",
    "qwen3_5-published",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Builds each checkpoint form once, loads it into the port and exports it.

    Returns a function of the case name -> (checkpoint dir, port, export dir)."""
    built = {}

    def get(name: str):
        if name not in built:
            options = dict(CASES[name])
            source = tmp_path_factory.mktemp(name)
            make_tiny_checkpoint(source, options.pop("generation"), seed=len(built), **options)
            port = load_pretrained(source)
            target = tmp_path_factory.mktemp(name + "-export")
            sharded = "max_shard_size" in options
            export(port, target, **({"max_shard_bytes": EXPORT_SHARD_BYTES} if sharded else {}))
            built[name] = (str(source), port, str(target))
        return built[name]

    return get


def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory under its hub-layout key, read by the safetensors
    library (not by the port's own reader, so a reading bug cannot cancel out)."""
    tensors = {}
    for file in checkpoint_files(directory):
        for key, value in load_file(file).items():
            assert normalise_key(key) not in tensors, f"{key} stored twice"
            tensors[normalise_key(key)] = value.numpy()
    return tensors


def port_logits(port, inp) -> np.ndarray:
    arrays = port_arrays(port.config, inp)
    forward = jax.jit(lambda ids, pos, mask, vision: port.logits(port(ids, pos, mask, vision)))
    mask = inp.attention_mask.astype(bool)
    return np.asarray(forward(inp.input_ids, arrays["positions"], mask, arrays["vision"]))


@pytest.fixture
def broken(checkpoints, tmp_path):
    """A writable copy of a checkpoint, to break."""

    def copy(case: str) -> str:
        source, _, _ = checkpoints(case)
        target = tmp_path / "broken"
        shutil.copytree(source, target)
        return str(target)

    return copy


def rewrite_tensors(directory: str, change) -> None:
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------
# Checkpoint -> port -> export.


@pytest.mark.parametrize("case", CASES)
def test_export_reproduces_every_checkpoint_tensor_exactly(checkpoints, case):
    source, _, target = checkpoints(case)
    original, exported = read_tensors(source), read_tensors(target)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype, key
        assert np.array_equal(exported[key], value), key


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("qwen3_vl")])
def test_qwen3_export_keeps_the_published_tensor_names(checkpoints, case):
    """Qwen3-VL checkpoints are published as model.language_model.* / model.visual.*; the export
    writes those names, not the Qwen2 hub layout."""
    source, _, target = checkpoints(case)

    def names(directory):
        return sorted(k for f in checkpoint_files(directory) for k in load_file(f))

    assert names(target) == names(source)
    assert any(
        k.startswith("model.language_model.layers.0.self_attn.q_norm") for k in names(target)
    )
    assert any(k.startswith("model.visual.deepstack_merger_list.1.") for k in names(target))


def test_qwen3_5_export_writes_each_layer_kind_under_its_hub_index(checkpoints):
    """The hybrid decoder's groups (model/hybrid.py) export as hub layers 0..3 again: linear
    layers 0 and 2, attention layers 1 and 3, in the published names."""
    source, _, target = checkpoints("qwen3_5-published")
    names = sorted(k for f in checkpoint_files(target) for k in load_file(f))
    assert names == sorted(k for f in checkpoint_files(source) for k in load_file(f))
    prefix = "model.language_model.layers"
    for i in (0, 2):
        assert f"{prefix}.{i}.linear_attn.A_log" in names
        assert f"{prefix}.{i}.linear_attn.conv1d.weight" in names
    for i in (1, 3):
        assert f"{prefix}.{i}.self_attn.q_norm.weight" in names


@pytest.mark.parametrize("case", CASES)
def test_export_config_reads_back_as_the_loaded_config(checkpoints, case):
    source, port, target = checkpoints(case)
    assert ModelConfig.from_pretrained(target) == ModelConfig.from_pretrained(source)
    assert ModelConfig.from_pretrained(target) == port.config


@pytest.mark.parametrize("case", [c for c in CASES if "sharded" in c])
def test_sharded_export_writes_an_index_naming_each_tensor_file(checkpoints, case):
    source, _, target = checkpoints(case)
    assert len(checkpoint_files(source)) > 1  # the input was sharded too
    assert not os.path.exists(os.path.join(target, "model.safetensors"))
    with open(os.path.join(target, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    total = 0
    for name in files:
        tensors = dict(iter_safetensors(os.path.join(target, name)))
        assert {k for k, v in index["weight_map"].items() if v == name} == set(tensors)
        size = sum(value.nbytes for value in tensors.values())
        assert size <= EXPORT_SHARD_BYTES or len(tensors) == 1  # a big tensor gets its own file
        total += size
    assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("case", [c for c in CASES if "tied" in c])
def test_tied_checkpoint_loads_and_exports_without_lm_head(checkpoints, case):
    source, port, target = checkpoints(case)
    assert "lm_head.weight" not in read_tensors(source)
    assert port.lm_head is None
    assert "lm_head.weight" not in read_tensors(target)


def test_tied_checkpoint_that_stores_lm_head_still_loads(broken):
    directory = broken("qwen2_5_vl-hub-nested-tied")
    rewrite_tensors(
        directory,
        lambda tensors: tensors.update(
            {"lm_head.weight": tensors["model.embed_tokens.weight"].clone()}
        ),
    )
    assert load_pretrained(directory).lm_head is None


def test_export_copies_tokenizer_files(checkpoints, tmp_path):
    _, port, _ = checkpoints("qwen2_vl-hub-flat")
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text('{"model": "tiny"}')
    (tokenizer / "chat_template.jinja").write_text("{{ messages }}")
    export(port, tmp_path / "out", tokenizer_dir=tokenizer)
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"model": "tiny"}'
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{{ messages }}"


# ------------------------------------------------------------------------------------------------
# transformers loads the export.


@pytest.mark.parametrize(
    "case", ["qwen2_vl-hub-flat", "qwen2_5_vl-hub-nested-tied", "qwen3_vl-published-tied"]
)
def test_transformers_accepts_the_exported_config(checkpoints, case):
    _, port, target = checkpoints(case)
    config = AutoConfig.from_pretrained(target)
    assert config.model_type == port.config.model_type


@pytest.mark.parametrize("case", LOGIT_CASES)
def test_transformers_logits_on_export_equal_port_logits(checkpoints, case):
    """transformers' model of the export gives the port's logits: the parity checker's port
    (the export loaded back) on every input, and the port that was exported on the padded
    batch (an image row and a video row)."""
    _, port, target = checkpoints(case)
    rows = compare(target, tolerance=LOGIT_TOLERANCE)
    assert [r["input"] for r in rows] == list(INPUT_NAMES)
    assert [r["input"] for r in rows if not r["ok"]] == []
    reference = AutoModelForImageTextToText.from_pretrained(target, dtype=torch.float32).eval()
    if port.config.tie_word_embeddings:
        embed = reference.model.language_model.embed_tokens.weight
        assert reference.lm_head.weight.data_ptr() == embed.data_ptr()
    inp = next(i for i in build_inputs(port.config) if i.name == "batch of two, padded")
    ours = port_logits(port, inp)
    expected = torch_logits(reference, port.config, inp, port_arrays(port.config, inp)["positions"])
    valid = inp.attention_mask.astype(bool)
    scale = np.abs(expected[valid]).max()
    assert np.abs(ours - expected)[valid].max() <= LOGIT_TOLERANCE * scale


def test_qwen3_config_reads_rope_parameters_and_rope_scaling_alike():
    """transformers 4.57 wrote rope_scaling + rope_theta, 5.x writes rope_parameters: the same
    model either way."""
    raw = tiny_hf_config("qwen3_vl")
    text = dict(raw["text_config"])
    scaling, theta = text.pop("rope_scaling"), text.pop("rope_theta")
    parameters = {
        **raw,
        "text_config": {**text, "rope_parameters": {**scaling, "rope_theta": theta}},
    }
    config = ModelConfig.from_hf_dict(raw)
    assert ModelConfig.from_hf_dict(parameters) == config
    assert config.text.head_dim == 32 != config.text.hidden_size // config.text.num_heads
    assert config.text.qk_norm and config.text.mrope_interleaved
    assert not config.text.attention_bias


def test_bfloat16_export_loads_in_transformers_as_bfloat16(checkpoints, tmp_path):
    source, port, _ = checkpoints("qwen2_vl-hub-flat")
    export(port, tmp_path, dtype="bfloat16")
    reference = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype="auto")
    assert reference.dtype == torch.bfloat16
    original = load_file(os.path.join(source, "model.safetensors"))
    loaded = reference.state_dict()
    for key, value in original.items():
        hf_key = key.replace("model.", "model.language_model.", 1)
        hf_key = "model." + key if key.startswith("visual.") else hf_key
        assert loaded[hf_key].dtype == torch.bfloat16, hf_key
        assert torch.equal(loaded[hf_key], value.to(torch.bfloat16)), hf_key


# ------------------------------------------------------------------------------------------------
# Load errors name what is wrong.


def test_load_without_config_json_names_it(broken):
    directory = broken("qwen2_vl-hub-flat")
    os.remove(os.path.join(directory, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(directory)


def test_load_without_tensor_file_names_model_safetensors(broken):
    directory = broken("qwen2_vl-hub-flat")
    os.remove(os.path.join(directory, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(directory)


def test_load_with_index_naming_a_missing_shard_names_the_file(broken):
    directory = broken("qwen2_5_vl-in_memory-flat-sharded")
    missing = os.path.basename(checkpoint_files(directory)[2])
    os.remove(os.path.join(directory, missing))
    with pytest.raises(FileNotFoundError, match=missing):
        load_pretrained(directory)


@pytest.mark.parametrize(
    "key",
    [
        "model.layers.1.self_attn.q_proj.bias",
        "visual.blocks.2.attn.qkv.weight",
        "visual.merger.mlp.2.bias",
        "lm_head.weight",  # untied: the head is required
    ],
)
def test_load_with_a_missing_tensor_names_its_hub_key(broken, key):
    directory = broken("qwen2_vl-hub-flat")
    rewrite_tensors(directory, lambda tensors: tensors.pop(key))
    with pytest.raises(ValueError, match=f"missing tensors: .*'{key}'"):
        load_pretrained(directory)


def test_load_with_a_missing_tensor_in_memory_layout_names_it(broken):
    directory = broken("qwen2_5_vl-in_memory-flat-sharded")
    index_path = os.path.join(directory, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    key = "model.language_model.layers.0.mlp.up_proj.weight"
    path = os.path.join(directory, index["weight_map"].pop(key))
    tensors = load_file(path)
    del tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})
    with open(index_path, "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match=r"missing tensors: .*'model\.layers\.0\.mlp\.up_proj"):
        load_pretrained(directory)


def test_load_with_a_misshapen_tensor_names_it_and_both_shapes(broken):
    directory = broken("qwen2_vl-hub-flat")
    key = "model.layers.0.self_attn.q_proj.bias"  # [64]
    rewrite_tensors(directory, lambda tensors: tensors.update({key: torch.zeros(60)}))
    with pytest.raises(ValueError, match=rf"{key} has shape \(60,\).*shape \(64,\)"):
        load_pretrained(directory)


def test_load_with_a_transposed_tensor_names_the_expected_checkpoint_shape(broken):
    directory = broken("qwen2_vl-hub-flat")
    key = "model.layers.0.self_attn.k_proj.weight"  # [kv_heads * head_dim, hidden] = [32, 64]
    rewrite_tensors(directory, lambda tensors: tensors.update({key: tensors[key].T.contiguous()}))
    with pytest.raises(ValueError, match=rf"{key} has shape \(64, 32\).*\(32, 64\)"):
        load_pretrained(directory)


def test_load_with_unknown_model_type_names_it(broken):
    directory = broken("qwen2_vl-hub-flat")
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        raw = json.load(f)
    with open(path, "w") as f:
        json.dump({**raw, "model_type": "llava"}, f)
    with pytest.raises(ValueError, match="unknown model_type 'llava'"):
        load_pretrained(directory)


# ------------------------------------------------------------------------------------------------
# config.json.


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_config_round_trips_through_hf_dict(generation, nested, tied):
    config = ModelConfig.from_hf_dict(
        tiny_hf_config(generation, nested=nested, tie_word_embeddings=tied)
    )
    assert config.model_type == generation and config.tie_word_embeddings == tied
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl"])
def test_config_round_trips_at_7b_defaults(generation):
    config = ModelConfig(model_type=generation)
    if generation == "qwen2_5_vl":
        config = config.replace(
            vision=config.vision.__class__(
                generation="qwen2_5_vl",
                intermediate_size=3420,
                hidden_act="silu",
                fullatt_block_indexes=(7, 15, 23, 31),
            )
        )
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("generation", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_config_reads_the_nested_form_transformers_writes(generation, tied, tmp_path):
    raw = tiny_hf_config(generation, tie_word_embeddings=tied)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    AutoConfig.from_pretrained(tmp_path).save_pretrained(tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "text_config" in written and "rope_parameters" in written["text_config"]
    assert ModelConfig.from_hf_dict(written) == ModelConfig.from_hf_dict(raw)


def test_qwen3_5_config_reads_its_hybrid_fields_and_ignores_deepstack():
    """Qwen3.5's text fields (layer pattern, DeltaNet heads, gate, partial rotary, norm offset);
    its vision config has no DeepStack, and a `deepstack_visual_indexes` there is ignored, as
    transformers ignores it."""
    raw = tiny_hf_config(
        "qwen3_5", num_layers=3, vision_overrides={"deepstack_visual_indexes": [1]}
    )
    config = ModelConfig.from_hf_dict(raw)
    t = config.text
    assert t.kinds == ("linear_attention", "full_attention", "linear_attention")
    assert t.is_hybrid and t.period == 3 and t.attn_output_gate and t.norm_offset == 1.0
    assert t.rotary_dim == 16 and t.linear_num_value_heads == 4
    assert config.vision.deepstack == 0 and config.timestamped_videos
    bad = tiny_hf_config("qwen3_5", layer_types=["linear_attention", "sliding_attention"])
    with pytest.raises(ValueError, match="layer_types"):
        ModelConfig.from_hf_dict(bad)

"""Published shapes (model/shapes.py) build models of the published sizes."""

import math

import jax
import pytest
from flax import nnx

from model.qwen2_vl import Qwen2VL
from model.shapes import PUBLISHED, published_config

# Parameter counts the checkpoints' Hugging Face model cards give ("Model size"), in billions,
# to the three significant digits they print.
CARD_SIZES = {
    "Qwen2-VL-2B": 2.21,
    "Qwen2-VL-7B": 8.29,
    "Qwen2.5-VL-3B": 3.75,
    "Qwen2.5-VL-7B": 8.29,
    "Qwen3-VL-2B": 2.13,
    "Qwen3-VL-4B": 4.44,
    "Qwen3-VL-8B": 8.77,
    "Qwen3-VL-32B": 33.4,
}


@pytest.mark.parametrize("name", sorted(CARD_SIZES))
def test_published_shape_has_the_model_cards_parameter_count(name):
    config = published_config(name)
    model = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0)))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert float(f"{count / 1e9:.3g}") == CARD_SIZES[name]


def test_qwen3_vl_shapes_read_their_text_and_vision_fields():
    config = published_config("Qwen3-VL-8B-Instruct")
    assert config.model_type == "qwen3_vl"
    assert config.text.head_dim == 128 and config.text.qk_norm and not config.text.attention_bias
    assert config.text.mrope_section == (24, 20, 20) and config.text.rope_theta == 5e6
    assert config.vision.patch_size == 16 and config.vision.deepstack_visual_indexes == (8, 16, 24)
    small = published_config("Qwen3-VL-4B-Thinking")
    assert small.tie_word_embeddings and small.text.head_dim * small.text.num_heads == 4096


@pytest.mark.parametrize("name", ["Qwen3.5-9B", "Qwen3.5-27B"])
def test_qwen3_5_shape_has_transformers_parameter_count(name):
    """Qwen3.5's checkpoints also hold a multi-token-prediction head the port does not run, so
    the count to match is transformers' own model of the same config.json (built on the meta
    device: nothing allocated), exactly."""
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    config = published_config(name)
    assert config.text.kinds[:4] == ("linear_attention",) * 3 + ("full_attention",)
    model = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0)))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    raw = {k: v for k, v in PUBLISHED[name].items() if k != "model_type"}
    with torch.device("meta"):
        reference = Qwen3_5ForConditionalGeneration(Qwen3_5Config(**raw))
    assert count == sum(p.numel() for p in reference.parameters())


def test_unknown_shape_lists_the_known_ones():
    with pytest.raises(ValueError, match="Qwen3-VL-8B"):
        published_config("Qwen3-VL-9B")

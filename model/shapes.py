"""Published model shapes: the config.json fields of the released Qwen2-VL, Qwen2.5-VL, Qwen3-VL
and Qwen3.5 checkpoints (Instruct and base, or Thinking, share them), so a model's size is known
without its files.

    config = published_config("Qwen2.5-VL-7B")     # a ModelConfig, nothing downloaded

Only the fields that shape the model (and its special token ids) are listed; the rest of each
config.json does not change a parameter or an activation.
"""

from __future__ import annotations

from typing import Any

from model.config import ModelConfig

_TOKENS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}

_QWEN2_VL_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "hidden_act": "quick_gelu",
}

_QWEN2_5_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "hidden_act": "silu",
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}


def _qwen2_vl(hidden, intermediate, layers, heads, kv_heads, vocab, tie) -> dict[str, Any]:
    return {
        **_TOKENS,
        "model_type": "qwen2_vl",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "tie_word_embeddings": tie,
        "max_position_embeddings": 32768,
        "vision_config": {**_QWEN2_VL_VISION, "hidden_size": hidden},
    }


def _qwen2_5_vl(hidden, intermediate, layers, heads, kv_heads, vocab, tie) -> dict[str, Any]:
    return {
        **_TOKENS,
        "model_type": "qwen2_5_vl",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "tie_word_embeddings": tie,
        "max_position_embeddings": 128000,
        "vision_config": {**_QWEN2_5_VL_VISION, "out_hidden_size": hidden},
    }


_QWEN3_VL_VISION_SMALL = {  # Qwen3-VL-2B and -4B
    "depth": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "deepstack_visual_indexes": [5, 11, 17],
}
_QWEN3_VL_VISION_LARGE = {  # Qwen3-VL-8B and -32B
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "deepstack_visual_indexes": [8, 16, 24],
}


# The fields every Qwen3-kind vision tower (Qwen3-VL, Qwen3.5) shares.
_QWEN3_VISION = {
    "num_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "in_channels": 3,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 2304,
}


def _qwen3_vl(hidden, intermediate, layers, heads, kv_heads, tie, vision) -> dict[str, Any]:
    """Qwen3-VL's nested config.json (text: Qwen3 with head_dim 128, rope_theta 5e6)."""
    text = {
        "vocab_size": 151936,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_theta": 5000000,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        "max_position_embeddings": 262144,
        "tie_word_embeddings": tie,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }
    return {
        "model_type": "qwen3_vl",
        "tie_word_embeddings": tie,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "text_config": text,
        "vision_config": {
            **vision,
            **_QWEN3_VISION,
            "model_type": "qwen3_vl",
            "out_hidden_size": hidden,
        },
    }


def _qwen3_5(hidden, intermediate, layers, heads, linear_value_heads) -> dict[str, Any]:
    """Qwen3.5's nested config.json: three Gated DeltaNet layers then one gated attention layer
    (head_dim 256, a quarter of it rotating), 16 key heads of 128 in the DeltaNet layers, and
    Qwen3-VL-8B's vision tower without DeepStack."""
    text = {
        "vocab_size": 248320,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
        "layer_types": ["linear_attention"] * 3 + ["full_attention"],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": linear_value_heads,
        "max_position_embeddings": 262144,
        "tie_word_embeddings": False,
        "eos_token_id": 248044,
    }
    text["layer_types"] = text["layer_types"] * (layers // 4)
    return {
        "model_type": "qwen3_5",
        "tie_word_embeddings": False,
        "image_token_id": 248056,
        "video_token_id": 248057,
        "vision_start_token_id": 248053,
        "vision_end_token_id": 248054,
        "text_config": text,
        "vision_config": {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            **_QWEN3_VISION,
            "model_type": "qwen3_5_vision",
            "out_hidden_size": hidden,
        },
    }


# name -> the released config.json's shape fields.
PUBLISHED: dict[str, dict[str, Any]] = {
    "Qwen2-VL-2B": _qwen2_vl(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen2-VL-7B": _qwen2_vl(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen2.5-VL-3B": _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen2.5-VL-7B": _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen3-VL-2B": _qwen3_vl(2048, 6144, 28, 16, 8, True, _QWEN3_VL_VISION_SMALL),
    "Qwen3-VL-4B": _qwen3_vl(2560, 9728, 36, 32, 8, True, _QWEN3_VL_VISION_SMALL),
    "Qwen3-VL-8B": _qwen3_vl(4096, 12288, 36, 32, 8, False, _QWEN3_VL_VISION_LARGE),
    "Qwen3-VL-32B": _qwen3_vl(5120, 25600, 64, 64, 8, False, _QWEN3_VL_VISION_LARGE),
    "Qwen3.5-9B": _qwen3_5(4096, 12288, 32, 16, 32),
    "Qwen3.5-27B": _qwen3_5(5120, 17408, 64, 24, 48),
}


def published_config(name: str) -> ModelConfig:
    """The ModelConfig of a released checkpoint by name (an `-Instruct` or `-Thinking` suffix is
    accepted)."""
    key = name.removesuffix("-Instruct").removesuffix("-Thinking")
    if key not in PUBLISHED:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(PUBLISHED)}")
    return ModelConfig.from_hf_dict(PUBLISHED[key])

"""Published model shapes: the config.json fields of the released Qwen2-VL and Qwen2.5-VL
checkpoints (Instruct and base share them), so a model's size is known without its files.

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


# name -> the released config.json's shape fields.
PUBLISHED: dict[str, dict[str, Any]] = {
    "Qwen2-VL-2B": _qwen2_vl(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen2-VL-7B": _qwen2_vl(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen2.5-VL-3B": _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen2.5-VL-7B": _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, False),
}


def published_config(name: str) -> ModelConfig:
    """The ModelConfig of a released checkpoint by name (an `-Instruct` suffix is accepted)."""
    key = name.removesuffix("-Instruct")
    if key not in PUBLISHED:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(PUBLISHED)}")
    return ModelConfig.from_hf_dict(PUBLISHED[key])

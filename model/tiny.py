"""Tiny random transformers checkpoints of every generation, for tests, benchmarks and the parity
demo. Needs PyTorch (a test dependency), imported only when called."""

from __future__ import annotations

import json
import os
from typing import Any

# Special token ids of tiny checkpoints: small so the vocabulary can stay small.
TINY_TOKEN_IDS = {
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "vision_start_token_id": 3,
    "vision_end_token_id": 4,
    "image_token_id": 5,
    "video_token_id": 6,
}


def tiny_hf_config(
    generation: str = "qwen2_vl",
    *,
    tie_word_embeddings: bool = False,
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_depth: int = 4,
    vision_width: int = 32,
    vision_mlp_ratio: int = 2,
    heads: int = 4,
    head_dim: int | None = None,
    token_ids: dict[str, int] | None = None,
    nested: bool = False,
    vision_overrides: dict[str, Any] | None = None,
    layer_types: list[str] | None = None,
    rotary_fraction: float = 0.5,
    **overrides: Any,
) -> dict[str, Any]:
    """A config.json dict for a tiny model. `nested` writes the newer `text_config` form (always
    for Qwen3-VL and Qwen3.5); `vision_overrides` change vision_config fields, `overrides`
    top-level ones. `heads` attention heads, half as many KV heads, each hidden_size / heads
    wide; Qwen3-VL and Qwen3.5 give the width as a field of its own, `head_dim` (default 32).
    Qwen3.5 only: `layer_types` (default: linear, full, repeated) and `rotary_fraction`, the
    share of each head's dims that rotate."""
    ids = {**TINY_TOKEN_IDS, **(token_ids or {})}

    def sections(pairs: int) -> list[int]:
        """M-RoPE's (temporal, height, width) split of a head's `pairs` rotating pairs."""
        return [pairs - 2 * (pairs // 3), pairs // 3, pairs // 3]

    if head_dim is not None and generation not in ("qwen3_vl", "qwen3_5"):
        raise ValueError(f"{generation}'s heads are hidden_size / heads wide: no head_dim")
    qwen3_head_dim = head_dim or 32
    section = sections(hidden_size // heads // 2)
    text = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "max_position_embeddings": 4096,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    # Qwen3-VL's and Qwen3.5's tower: 16-pixel patches, a 4 x 4 grid of position embeddings
    # (every test image is interpolated up or down from it).
    qwen3_vision = {
        "depth": vision_depth,
        "hidden_size": vision_width,
        "intermediate_size": vision_width * vision_mlp_ratio,
        "num_heads": 4,
        "hidden_act": "gelu_pytorch_tanh",
        "out_hidden_size": hidden_size,
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,
    }
    if generation == "qwen2_vl":
        vision = {
            "depth": vision_depth,
            "embed_dim": vision_width,
            "mlp_ratio": vision_mlp_ratio,
            "num_heads": 4,
            "hidden_size": hidden_size,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "model_type": "qwen2_vl",
        }
        architecture = "Qwen2VLForConditionalGeneration"
    elif generation == "qwen2_5_vl":
        vision = {
            "depth": vision_depth,
            "hidden_size": vision_width,
            "intermediate_size": vision_width * vision_mlp_ratio,
            "num_heads": 4,
            "hidden_act": "silu",
            "out_hidden_size": hidden_size,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            # 56-pixel windows = 2x2 merged tokens: small images still span several windows.
            "window_size": 56,
            "fullatt_block_indexes": [1, 3],
            "tokens_per_second": 2,
            "model_type": "qwen2_5_vl",
        }
        architecture = "Qwen2_5_VLForConditionalGeneration"
    elif generation == "qwen3_vl":
        # Qwen3: head_dim a field of its own (here wider than hidden / heads), no attention
        # bias, interleaved M-RoPE sections summing to head_dim / 2 (32: [6, 5, 5]).
        text = {
            **text,
            "head_dim": qwen3_head_dim,
            "attention_bias": False,
            "rope_scaling": {
                "rope_type": "default",
                "mrope_section": sections(qwen3_head_dim // 2),
                "mrope_interleaved": True,
            },
        }
        vision = {
            **qwen3_vision,
            "deepstack_visual_indexes": [1, 3],
            "model_type": "qwen3_vl",
        }
        architecture = "Qwen3VLForConditionalGeneration"
        nested = True  # Qwen3-VL's config.json is always nested
    elif generation == "qwen3_5":
        # Qwen3.5: Qwen3-VL's text settings plus the hybrid layers (Gated DeltaNet with 2 key
        # heads serving 4 value heads), an output gate on attention, `rotary_fraction` of each
        # head rotating (0.5 of 32 dims: sections [4, 2, 2] interleaved), and Qwen3-VL's tower
        # without DeepStack.
        text = {k: v for k, v in text.items() if k not in ("rope_theta", "rope_scaling")}
        text = {
            **text,
            "head_dim": qwen3_head_dim,
            "attention_bias": False,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": rotary_fraction,
                "mrope_section": sections(int(qwen3_head_dim * rotary_fraction) // 2),
                "mrope_interleaved": True,
            },
            "layer_types": layer_types
            or ["linear_attention", "full_attention"] * (num_layers // 2)
            + ["linear_attention"] * (num_layers % 2),
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 24,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
        }
        vision = {**qwen3_vision, "model_type": "qwen3_5_vision"}
        architecture = "Qwen3_5ForConditionalGeneration"
        nested = True
    else:
        raise ValueError(f"unknown generation {generation!r}")
    vision.update(vision_overrides or {})
    top = {
        "architectures": [architecture],
        "model_type": generation,
        "tie_word_embeddings": tie_word_embeddings,
        "vision_start_token_id": ids["vision_start_token_id"],
        "vision_end_token_id": ids["vision_end_token_id"],
        "image_token_id": ids["image_token_id"],
        "video_token_id": ids["video_token_id"],
        "vision_config": vision,
    }
    if nested:
        text = {
            **text,
            "model_type": f"{generation}_text",
            "tie_word_embeddings": tie_word_embeddings,
        }
        raw = {**top, "text_config": text}
    else:
        raw = {**top, **text}
    raw.update(overrides)
    return raw


def make_tiny_checkpoint(
    directory: str | os.PathLike,
    generation: str = "qwen2_vl",
    *,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    nested: bool = False,
    in_memory_keys: bool = False,
    max_shard_size: str | None = None,
    **config_kwargs: Any,
):
    """Builds a random transformers model, saves it to `directory`, returns the torch model.

    `in_memory_keys` rewrites the saved tensor names into the newer transformers layout
    (`model.language_model.*`, `model.visual.*`); `max_shard_size` splits the file with an index.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    raw = tiny_hf_config(
        generation, tie_word_embeddings=tie_word_embeddings, nested=nested, **config_kwargs
    )
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    config = AutoConfig.from_pretrained(directory)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    # Random init leaves biases and norms at 0/1; perturb every tensor so that a mix-up of
    # parameters cannot cancel out in the parity checks.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    # Keep our config.json form (flat or nested) as the checkpoint's.
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    if in_memory_keys:
        _rewrite_keys_in_memory_layout(directory, load_file, save_file)
    return model


def _rewrite_keys_in_memory_layout(directory: str, load_file, save_file) -> None:
    for name in os.listdir(directory):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(directory, name)
        tensors = load_file(path)
        renamed = {}
        for key, value in tensors.items():
            if key.startswith("visual."):
                key = "model." + key
            elif key.startswith("model.") and not key.startswith(
                ("model.language_model.", "model.visual.")
            ):
                key = "model.language_model." + key[len("model.") :]
            renamed[key] = value.contiguous()
        save_file(renamed, path, metadata={"format": "pt"})
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            data = json.load(f)
        data["weight_map"] = {
            (
                "model." + k
                if k.startswith("visual.")
                else "model.language_model." + k[len("model.") :]
                if k.startswith("model.")
                and not k.startswith(("model.language_model.", "model.visual."))
                else k
            ): v
            for k, v in data["weight_map"].items()
        }
        with open(index, "w") as f:
            json.dump(data, f, indent=2)

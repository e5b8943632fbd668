"""Model configuration for Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5, read from (and written
to) a Hugging Face config.json in either of its forms: the flat one of the published Qwen2
checkpoints and the nested `text_config` one (Qwen3-VL's and Qwen3.5's own, and what newer
transformers versions write), with the rotary settings under `rope_scaling` + `rope_theta`
(transformers 4) or `rope_parameters` (5)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")
# The generations whose videos are one item per temporal patch after a text timestamp, and whose
# vision tower is Qwen3-VL's kind (Qwen3.5: without DeepStack).
QWEN3_TYPES = ("qwen3_vl", "qwen3_5")
FULL_ATTENTION, LINEAR_ATTENTION = "full_attention", "linear_attention"
# Qwen3.5's Gated DeltaNet sizes, config.json fields and TextConfig fields alike.
LINEAR_FIELDS = (
    "linear_conv_kernel_dim",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "linear_num_key_heads",
    "linear_num_value_heads",
)


def _int_if_whole(x: float) -> int | float:
    """transformers declares some config fields int and rejects 2.0 for them."""
    return int(x) if float(x).is_integer() else x


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The vision tower. `generation` picks the block type: Qwen2-VL (LayerNorm, QuickGELU MLP,
    full attention), Qwen2.5-VL (RMSNorm, SwiGLU MLP, window attention) or Qwen3-VL (Qwen2-VL's
    blocks with a tanh-GELU MLP, a patch embedding with bias, learned position embeddings on a
    `num_position_embeddings` grid interpolated to each image, and DeepStack mergers after the
    blocks `deepstack_visual_indexes`)."""

    generation: str = "qwen2_vl"
    depth: int = 32
    hidden_size: int = 1280
    num_heads: int = 16
    intermediate_size: int = 5120
    hidden_act: str = "quick_gelu"
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 3584
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: float = 2.0
    rope_theta: float = 10000.0
    num_position_embeddings: int = 0  # Qwen3-VL: a side x side grid of learned embeddings
    deepstack_visual_indexes: tuple[int, ...] = ()
    initializer_range: float = 0.02  # std of the random init (only used without weights)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_pos_embed(self) -> bool:
        return self.num_position_embeddings > 0

    @property
    def deepstack(self) -> int:
        """DeepStack feature sets the tower returns beside the merged features (Qwen3-VL)."""
        return len(self.deepstack_visual_indexes)

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: channels x temporal patch x patch x patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def is_windowed(self) -> bool:
        return self.generation == "qwen2_5_vl"


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder with multimodal rotary position embedding (M-RoPE); with `qk_norm`,
    no `attention_bias` and interleaved M-RoPE sections, Qwen3-VL's Qwen3 decoder."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02  # std of the random init (only used without weights)
    attention_bias: bool = True  # q, k, v projections with bias (Qwen2); Qwen3: none
    qk_norm: bool = False  # RMSNorm over each head of the queries and keys (Qwen3)
    # Qwen3-VL's M-RoPE: frequencies go to the T, H, W axes in turn (T H W T H W ...) instead of
    # in three contiguous sections.
    mrope_interleaved: bool = False
    explicit_head_dim: int | None = None  # config.json `head_dim` where it is given (Qwen3)
    # Qwen3.5's hybrid decoder. `layer_types`: each layer's token mixer, "full_attention" or
    # "linear_attention" (Gated DeltaNet, model/delta_net.py); () is all full attention.
    layer_types: tuple[str, ...] = ()
    attn_output_gate: bool = False  # full attention's output times sigmoid(a gate from q_proj)
    partial_rotary_factor: float = 1.0  # the share of each head's dims that rotate
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Qwen3.5 stores weight - 1
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Dims of each query/key head that rotate (the first ones; the rest pass)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every layer's token mixer."""
        return self.layer_types or (FULL_ATTENTION,) * self.num_layers

    @property
    def is_hybrid(self) -> bool:
        return LINEAR_ATTENTION in self.layer_types

    @property
    def period(self) -> int:
        """The shortest repeat of `kinds` that tiles the layers (Qwen3.5: 3 linear + 1 full
        = 4): the decoder scans over groups of this many layers (model/hybrid.py)."""
        kinds = self.kinds
        n = len(kinds)
        for p in range(1, n + 1):
            if n % p == 0 and kinds == kinds[:p] * (n // p):
                return p
        return n


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A whole Qwen2-VL / Qwen2.5-VL model, plus the dtypes the port runs in."""

    model_type: str = "qwen2_vl"
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int | None = 151643
    eos_token_id: tuple[int, ...] = (151645,)
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def timestamped_videos(self) -> bool:
        """Videos as one item per temporal patch after its timestamp (Qwen3-VL, Qwen3.5)."""
        return self.model_type in QWEN3_TYPES

    # ----------------------------------------------------------------------------------------
    # Hugging Face config.json, both forms.

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Reads a Hugging Face config dict (flat published form or nested `text_config` form)."""
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"unknown model_type {model_type!r} in config.json; "
                f"supported: {', '.join(MODEL_TYPES)}"
            )
        text_raw = dict(raw)
        if isinstance(raw.get("text_config"), dict):
            # Nested form: text fields live under text_config; top-level values fill gaps only.
            text_raw = {**raw, **raw["text_config"]}
        vision_raw = raw.get("vision_config") or {}
        qwen3 = model_type in QWEN3_TYPES
        qwen35 = model_type == "qwen3_5"
        rope = text_raw.get("rope_scaling") or text_raw.get("rope_parameters") or {}
        default_section = (11, 11, 10) if qwen35 else (24, 20, 20) if qwen3 else (16, 24, 24)
        mrope = tuple(rope.get("mrope_section", default_section))
        # transformers' defaults (Qwen3.5: the published checkpoints' value).
        default_theta = 1e7 if qwen35 else 500000.0 if qwen3 else 1000000.0
        rope_theta = text_raw.get("rope_theta", rope.get("rope_theta", default_theta))
        rotary_share = rope.get(
            "partial_rotary_factor", text_raw.get("partial_rotary_factor", 0.25 if qwen35 else 1)
        )
        layer_types: tuple[str, ...] = ()
        if qwen35:
            n = int(text_raw["num_hidden_layers"])
            interval = int(text_raw.get("full_attention_interval", 4))
            layer_types = tuple(
                text_raw.get("layer_types")
                or [LINEAR_ATTENTION if (i + 1) % interval else FULL_ATTENTION for i in range(n)]
            )
            unknown = set(layer_types) - {FULL_ATTENTION, LINEAR_ATTENTION}
            if unknown or len(layer_types) != n:
                raise ValueError(
                    f"layer_types must name {n} layers, each {FULL_ATTENTION!r} or "
                    f"{LINEAR_ATTENTION!r}; got {list(layer_types)}"
                )
        linear = {key: int(text_raw[key]) for key in LINEAR_FIELDS if key in text_raw}
        text = TextConfig(
            vocab_size=int(text_raw["vocab_size"]),
            hidden_size=int(text_raw["hidden_size"]),
            intermediate_size=int(text_raw["intermediate_size"]),
            num_layers=int(text_raw["num_hidden_layers"]),
            num_heads=int(text_raw["num_attention_heads"]),
            num_kv_heads=int(
                text_raw.get("num_key_value_heads") or text_raw["num_attention_heads"]
            ),
            rms_norm_eps=float(text_raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            mrope_section=mrope,  # type: ignore[arg-type]
            hidden_act=text_raw.get("hidden_act", "silu"),
            max_position_embeddings=int(text_raw.get("max_position_embeddings", 32768)),
            initializer_range=float(text_raw.get("initializer_range", 0.02)),
            attention_bias=bool(text_raw.get("attention_bias", not qwen3)),
            qk_norm=qwen3,
            # transformers interleaves Qwen3-VL's sections whatever `mrope_interleaved` says.
            mrope_interleaved=qwen3,
            explicit_head_dim=int(text_raw["head_dim"])
            if qwen3 and "head_dim" in text_raw
            else None,
            layer_types=layer_types,
            attn_output_gate=qwen35,
            partial_rotary_factor=float(rotary_share),
            norm_offset=1.0 if qwen35 else 0.0,
            **linear,
        )
        if text.is_hybrid and text.linear_num_value_heads % text.linear_num_key_heads:
            raise ValueError(
                f"linear_num_value_heads {text.linear_num_value_heads} is not a multiple of "
                f"linear_num_key_heads {text.linear_num_key_heads}"
            )
        if sum(mrope) * 2 != text.rotary_dim:
            raise ValueError(
                f"mrope_section {list(mrope)} sums to {sum(mrope)}, expected half the rotary "
                f"dims = {text.rotary_dim // 2}"
            )
        vision_init = float(vision_raw.get("initializer_range", text.initializer_range))
        in_channels = int(vision_raw.get("in_channels", vision_raw.get("in_chans", 3)))
        patch = int(
            vision_raw.get("patch_size", vision_raw.get("spatial_patch_size", 16 if qwen3 else 14))
        )
        # Fields every generation reads the same way.
        common = dict(
            in_channels=in_channels,
            patch_size=patch,
            temporal_patch_size=int(vision_raw.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vision_raw.get("spatial_merge_size", 2)),
            initializer_range=vision_init,
        )
        if qwen3:
            vision_rope = vision_raw.get("rope_parameters") or {}
            # Qwen3.5's tower has no DeepStack: transformers ignores the field there, and so do we.
            taps = () if qwen35 else vision_raw.get("deepstack_visual_indexes", (8, 16, 24))
            vision = VisionConfig(
                generation="qwen3_vl",
                depth=int(vision_raw.get("depth", 27)),
                hidden_size=int(vision_raw.get("hidden_size", 1152)),
                num_heads=int(vision_raw.get("num_heads", 16)),
                intermediate_size=int(vision_raw.get("intermediate_size", 4304)),
                hidden_act=vision_raw.get("hidden_act", "gelu_pytorch_tanh"),
                out_hidden_size=int(vision_raw.get("out_hidden_size", text.hidden_size)),
                rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
                num_position_embeddings=int(vision_raw.get("num_position_embeddings", 2304)),
                deepstack_visual_indexes=tuple(int(i) for i in taps),
                **common,
            )
            side = math.isqrt(vision.num_position_embeddings)
            if side * side != vision.num_position_embeddings:
                raise ValueError(
                    f"num_position_embeddings {vision.num_position_embeddings} is not a square"
                )
            taps = vision.deepstack_visual_indexes
            if len(set(taps)) != len(taps) or any(not 0 <= i < vision.depth for i in taps):
                raise ValueError(
                    f"deepstack_visual_indexes {list(vision.deepstack_visual_indexes)} must be "
                    f"distinct vision blocks (0..{vision.depth - 1})"
                )
            if vision.deepstack > text.num_layers:
                raise ValueError(
                    f"{vision.deepstack} DeepStack feature sets for {text.num_layers} layers"
                )
        elif model_type == "qwen2_vl":
            width = int(vision_raw.get("embed_dim", 1280))
            vision = VisionConfig(
                generation="qwen2_vl",
                depth=int(vision_raw.get("depth", 32)),
                hidden_size=width,
                num_heads=int(vision_raw.get("num_heads", 16)),
                intermediate_size=int(width * vision_raw.get("mlp_ratio", 4)),
                hidden_act=vision_raw.get("hidden_act", "quick_gelu"),
                out_hidden_size=int(vision_raw.get("hidden_size", text.hidden_size)),
                **common,
            )
        else:
            vision = VisionConfig(
                generation="qwen2_5_vl",
                depth=int(vision_raw.get("depth", 32)),
                hidden_size=int(vision_raw.get("hidden_size", 1280)),
                num_heads=int(vision_raw.get("num_heads", 16)),
                intermediate_size=int(vision_raw.get("intermediate_size", 3420)),
                hidden_act=vision_raw.get("hidden_act", "silu"),
                out_hidden_size=int(vision_raw.get("out_hidden_size", text.hidden_size)),
                window_size=int(vision_raw.get("window_size", 112)),
                fullatt_block_indexes=tuple(
                    int(i) for i in vision_raw.get("fullatt_block_indexes", (7, 15, 23, 31))
                ),
                tokens_per_second=float(vision_raw.get("tokens_per_second", 2)),
                **common,
            )
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(
                f"vision output size {vision.out_hidden_size} != "
                f"text hidden size {text.hidden_size}"
            )
        tie = bool(
            raw.get("tie_word_embeddings")
            or (raw.get("text_config") or {}).get("tie_word_embeddings", False)
        )
        eos = text_raw.get("eos_token_id", 151645)
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))

        def token_id(name: str, default: int) -> int:
            return int(raw.get(name, text_raw.get(name, default)))

        return cls(
            model_type=model_type,
            vision=vision,
            text=text,
            tie_word_embeddings=tie,
            image_token_id=token_id("image_token_id", 151655),
            video_token_id=token_id("video_token_id", 151656),
            vision_start_token_id=token_id("vision_start_token_id", 151652),
            vision_end_token_id=token_id("vision_end_token_id", 151653),
            bos_token_id=text_raw.get("bos_token_id", 151643),
            eos_token_id=eos_ids,
            pad_token_id=text_raw.get("pad_token_id"),
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ModelConfig:
        """Reads `directory/config.json`."""
        path = os.path.join(directory, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json in checkpoint directory {directory}")
        with open(path) as f:
            return cls.from_hf_dict(json.load(f))

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json of the published checkpoints, which every transformers reads: flat for
        Qwen2-VL and Qwen2.5-VL, nested for Qwen3-VL."""
        if self.model_type in QWEN3_TYPES:
            return self._qwen3_hf_dict()
        t, v = self.text, self.vision
        if self.model_type == "qwen2_vl":
            vision_raw: dict[str, Any] = {
                "depth": v.depth,
                "embed_dim": v.hidden_size,
                "mlp_ratio": _int_if_whole(v.intermediate_size / v.hidden_size),
                "num_heads": v.num_heads,
                "hidden_act": v.hidden_act,
                "in_chans": v.in_channels,
                "hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
            }
            architecture = "Qwen2VLForConditionalGeneration"
        else:
            vision_raw = {
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "hidden_act": v.hidden_act,
                "in_chans": v.in_channels,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "tokens_per_second": _int_if_whole(v.tokens_per_second),
            }
            architecture = "Qwen2_5_VLForConditionalGeneration"
        vision_raw["model_type"] = self.model_type
        vision_raw["initializer_range"] = v.initializer_range
        eos = list(self.eos_token_id)
        return {
            "architectures": [architecture],
            "model_type": self.model_type,
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "hidden_act": t.hidden_act,
            "rms_norm_eps": t.rms_norm_eps,
            "initializer_range": t.initializer_range,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": self.pad_token_id,
            "use_sliding_window": False,
            "torch_dtype": self.param_dtype,
            "vision_config": vision_raw,
        }

    def _qwen3_hf_dict(self) -> dict[str, Any]:
        """Qwen3-VL's and Qwen3.5's nested config.json, rotary settings in the published form
        (Qwen3-VL: transformers 4.57's, which transformers 5 also reads)."""
        t, v = self.text, self.vision
        eos = list(self.eos_token_id)
        qwen35 = self.model_type == "qwen3_5"
        text_raw = {
            "model_type": f"{self.model_type}_text",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "head_dim": t.head_dim,
            "hidden_act": t.hidden_act,
            "rms_norm_eps": t.rms_norm_eps,
            "initializer_range": t.initializer_range,
            "attention_bias": t.attention_bias,
            "rope_theta": t.rope_theta,
            "rope_scaling": {
                "rope_type": "default",
                "mrope_section": list(t.mrope_section),
                "mrope_interleaved": True,
            },
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
        }
        if qwen35:
            del text_raw["rope_theta"], text_raw["rope_scaling"]
            text_raw["rope_parameters"] = {
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "partial_rotary_factor": t.partial_rotary_factor,
                "mrope_section": list(t.mrope_section),
                "mrope_interleaved": True,
            }
            text_raw["layer_types"] = list(t.kinds)
            for key in LINEAR_FIELDS:
                text_raw[key] = getattr(t, key)
        vision_raw = {
            "model_type": "qwen3_5_vision" if qwen35 else "qwen3_vl",
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "hidden_act": v.hidden_act,
            "in_channels": v.in_channels,
            "out_hidden_size": v.out_hidden_size,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
            "num_position_embeddings": v.num_position_embeddings,
            "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
            "initializer_range": v.initializer_range,
        }
        if qwen35:
            del vision_raw["deepstack_visual_indexes"]
        architecture = (
            "Qwen3_5ForConditionalGeneration" if qwen35 else "Qwen3VLForConditionalGeneration"
        )
        return {
            "architectures": [architecture],
            "model_type": self.model_type,
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "torch_dtype": self.param_dtype,
            "text_config": text_raw,
            "vision_config": vision_raw,
        }

"""Hugging Face checkpoints <-> port parameters, for every generation and both tensor-key layouts.

Import reads one tensor at a time from memory-mapped safetensors files (one file or several with
`model.safetensors.index.json`), converts it and places it straight onto its (optionally sharded)
device buffer, so the host never holds two full copies of the model. Keys may use the hub layout
(`model.layers.N`, `visual.blocks.N`, `lm_head`) or the newer transformers in-memory names
(`model.language_model.*`, `model.visual.*`: Qwen3-VL's published layout). Export writes each
generation's published layout plus config.json, so transformers and vLLM load it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from model.config import QWEN3_TYPES, ModelConfig
from model.hybrid import layer_name
from model.qwen2_vl import Qwen2VL
from model.sharding import DEFAULT_RULES, Rules, state_shardings

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)

# ------------------------------------------------------------------------------------------------
# Reading safetensors (memory-mapped; NumPy alone cannot read bfloat16 through safetensors).


def _read_header(path: str) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(size))
    return header, 8 + size


def iter_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (key, array) for every tensor of one file, each a view into a memory map."""
    header, offset = _read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        yield key, mm[offset + start : offset + end].view(dtype).reshape(info["shape"])


def checkpoint_files(directory: str) -> list[str]:
    """The safetensors files of a checkpoint directory, via the index when there is one."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
        if missing:
            raise FileNotFoundError(f"{directory}: files named by the index are missing: {missing}")
        return [os.path.join(directory, n) for n in names]
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(
        f"{directory}: no model.safetensors or model.safetensors.index.json in the checkpoint"
    )


# ------------------------------------------------------------------------------------------------
# Key mapping. A rule maps a hub key to a parameter path and a conversion both ways.

Path = tuple[Any, ...]


def _linear(t: np.ndarray) -> np.ndarray:
    return t.T


def _patch_embed(t: np.ndarray) -> np.ndarray:
    # Conv3d weight [out, C, T, P, P] == a linear map over flattened (C, T, P, P) patches.
    return t.reshape(t.shape[0], -1).T


def _same(t: np.ndarray) -> np.ndarray:
    return t


def qwen3_key(key: str) -> str:
    """Hub layout -> the names Qwen3-VL's checkpoints are published with (`model.visual.*`,
    `model.language_model.*`; lm_head as it is). normalise_key's inverse."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return key


def normalise_key(key: str) -> str:
    """transformers in-memory names (Qwen3-VL's published ones) -> hub layout."""
    if key.startswith("model.visual."):
        return key[len("model.") :]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key


def _merger_path(m: re.Match) -> Path:
    """Qwen3-VL's merger (`merger`) or DeepStack merger (`deepstack_merger_list.K`) parameter."""
    owner = ("merger",) if m[2] is None else ("deepstack_merger_list", int(m[2]))
    if m[3] == "norm":
        return ("visual", *owner, "norm", "scale" if m[4] == "weight" else "bias")
    return ("visual", *owner, m[3], "kernel" if m[4] == "weight" else "bias")


_RULES: list[tuple[re.Pattern, Callable[[re.Match], Path], str]] = [
    (
        re.compile(r"visual\.patch_embed\.proj\.weight"),
        lambda m: ("visual", "patch_embed", "kernel"),
        "patch",
    ),
    (
        re.compile(r"visual\.patch_embed\.proj\.bias"),
        lambda m: ("visual", "patch_embed", "bias"),
        "same",
    ),
    (re.compile(r"visual\.pos_embed\.weight"), lambda m: ("visual", "pos_embed"), "same"),
    (
        re.compile(
            r"visual\.(merger|deepstack_merger_list\.(\d+))\.(linear_fc1|linear_fc2)\.(weight|bias)"
        ),
        _merger_path,
        "linear",
    ),
    (
        re.compile(r"visual\.(merger|deepstack_merger_list\.(\d+))\.(norm)\.(weight|bias)"),
        _merger_path,
        "same",
    ),
    (
        re.compile(r"visual\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)"),
        lambda m: ("visual", "blocks", int(m[1]), m[2], "scale" if m[3] == "weight" else "bias"),
        "same",
    ),
    (
        re.compile(r"visual\.blocks\.(\d+)\.(attn|mlp)\.(\w+)\.(weight|bias)"),
        lambda m: (
            "visual",
            "blocks",
            int(m[1]),
            m[2],
            m[3],
            "kernel" if m[4] == "weight" else "bias",
        ),
        "linear",
    ),
    (
        re.compile(r"visual\.merger\.ln_q\.(weight|bias)"),
        lambda m: ("visual", "merger", "ln_q", "scale" if m[1] == "weight" else "bias"),
        "same",
    ),
    (
        re.compile(r"visual\.merger\.mlp\.(0|2)\.(weight|bias)"),
        lambda m: (
            "visual",
            "merger",
            "mlp_in" if m[1] == "0" else "mlp_out",
            "kernel" if m[2] == "weight" else "bias",
        ),
        "linear",
    ),
    (re.compile(r"model\.embed_tokens\.weight"), lambda m: ("embed_tokens",), "same"),
    (re.compile(r"model\.norm\.weight"), lambda m: ("norm", "scale"), "same"),
    (re.compile(r"lm_head\.weight"), lambda m: ("lm_head",), "linear"),
    (
        re.compile(r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight"),
        lambda m: ("layers", int(m[1]), m[2], "scale"),
        "same",
    ),
    (
        re.compile(r"model\.layers\.(\d+)\.self_attn\.(q_norm|k_norm)\.weight"),
        lambda m: ("layers", int(m[1]), "self_attn", m[2], "scale"),
        "same",
    ),
    (
        re.compile(r"model\.layers\.(\d+)\.linear_attn\.norm\.weight"),
        lambda m: ("layers", int(m[1]), "linear_attn", "norm", "scale"),
        "same",
    ),
    (
        re.compile(r"model\.layers\.(\d+)\.linear_attn\.conv1d\.weight"),
        lambda m: ("layers", int(m[1]), "linear_attn", "conv1d"),
        "conv",
    ),
    (
        re.compile(r"model\.layers\.(\d+)\.linear_attn\.(dt_bias|A_log)"),
        lambda m: ("layers", int(m[1]), "linear_attn", m[2]),
        "same",
    ),
    (
        re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp|linear_attn)\.(\w+)\.(weight|bias)"),
        lambda m: ("layers", int(m[1]), m[2], m[3], "kernel" if m[4] == "weight" else "bias"),
        "linear",
    ),
]


def _conv(t: np.ndarray) -> np.ndarray:
    # Depthwise Conv1d weight [channels, 1, K] -> [channels, K].
    return t.reshape(t.shape[0], t.shape[-1])


_TO_PORT = {"same": _same, "linear": _linear, "patch": _patch_embed, "conv": _conv}
# Buffers some checkpoints carry that the port recomputes, and Qwen3.5's multi-token-prediction
# head (`mtp.*`), which the port does not run.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$|mtp\..*")


def hub_key_to_path(key: str) -> tuple[Path, str] | None:
    """(parameter path, conversion) for a hub-layout key, or None if the key is unknown."""
    for pattern, path, conversion in _RULES:
        m = pattern.fullmatch(key)
        if m:
            return path(m), conversion
    return None


def _path_to_hub_key(path: Path) -> tuple[str, str]:
    """Inverse of hub_key_to_path for the parameters the port holds."""
    p = [str(x) for x in path]
    if p[0] == "visual":
        if p[1] == "patch_embed":
            if p[2] == "bias":
                return "visual.patch_embed.proj.bias", "same"
            return "visual.patch_embed.proj.weight", "patch"
        if p[1] == "pos_embed":
            return "visual.pos_embed.weight", "same"
        if p[1] == "deepstack_merger_list" or p[2] in ("norm", "linear_fc1", "linear_fc2"):
            owner = "merger" if p[1] == "merger" else f"deepstack_merger_list.{p[2]}"
            name, leaf = p[-2], p[-1]
            suffix = "weight" if leaf in ("scale", "kernel") else "bias"
            return f"visual.{owner}.{name}.{suffix}", "same" if name == "norm" else "linear"
        if p[1] == "merger":
            if p[2] == "ln_q":
                return f"visual.merger.ln_q.{'weight' if p[3] == 'scale' else 'bias'}", "same"
            idx = "0" if p[2] == "mlp_in" else "2"
            return f"visual.merger.mlp.{idx}.{'weight' if p[3] == 'kernel' else 'bias'}", "linear"
        block = f"visual.blocks.{p[2]}"
        if p[3] in ("norm1", "norm2"):
            return f"{block}.{p[3]}.{'weight' if p[4] == 'scale' else 'bias'}", "same"
        return f"{block}.{p[3]}.{p[4]}.{'weight' if p[5] == 'kernel' else 'bias'}", "linear"
    if p[0] == "embed_tokens":
        return "model.embed_tokens.weight", "same"
    if p[0] == "norm":
        return "model.norm.weight", "same"
    if p[0] == "lm_head":
        return "lm_head.weight", "linear"
    layer = f"model.layers.{p[1]}"
    if p[2] in ("input_layernorm", "post_attention_layernorm"):
        return f"{layer}.{p[2]}.weight", "same"
    if p[2] == "linear_attn":
        if p[3] in ("dt_bias", "A_log"):
            return f"{layer}.linear_attn.{p[3]}", "same"
        if p[3] == "conv1d":
            return f"{layer}.linear_attn.conv1d.weight", "conv"
        if p[3] == "norm":
            return f"{layer}.linear_attn.norm.weight", "same"
    if p[3] in ("q_norm", "k_norm"):
        return f"{layer}.self_attn.{p[3]}.weight", "same"
    return f"{layer}.{p[2]}.{p[3]}.{'weight' if p[4] == 'kernel' else 'bias'}", "linear"


def _to_group(path: Path, config: ModelConfig) -> Path:
    """A hybrid decoder's layer i is child i % p of group i // p (model/hybrid.py):
    ("layers", i, ...) -> ("layers", i // p, "layer_{i % p}", ...); other paths unchanged."""
    if not config.text.is_hybrid or path[0] != "layers" or not isinstance(path[1], int):
        return path
    group, position = divmod(path[1], config.text.period)
    return ("layers", group, layer_name(position), *path[2:])


def _from_group(path: Path, config: ModelConfig) -> Path:
    """_to_group's inverse."""
    if not config.text.is_hybrid or path[0] != "layers":
        return path
    position = int(str(path[2]).removeprefix("layer_"))
    return ("layers", path[1] * config.text.period + position, *path[3:])


# Stacked layers (model/stack.py, config model.scan_layers): the hub's tensors of layer i are
# slice i of one parameter whose path has no layer index.
_STACKS: tuple[Path, ...] = (("layers",), ("visual", "blocks"))


def _stack_prefix(path: Path) -> int:
    """The length of the stack prefix `path` starts with (0: none)."""
    for prefix in _STACKS:
        if path[: len(prefix)] == prefix and len(path) > len(prefix):
            return len(prefix)
    return 0


def _split_layer(path: Path) -> tuple[Path, int] | None:
    """("layers", 3, "mlp", ...) -> (("layers", "mlp", ...), 3); None outside the stacks."""
    n = _stack_prefix(path)
    if n and isinstance(path[n], int):
        return path[:n] + path[n + 1 :], path[n]
    return None


def _stacked_layers(path: Path) -> bool:
    """Whether `path` names a stacked parameter (a stack prefix not followed by an index)."""
    n = _stack_prefix(path)
    return bool(n) and not isinstance(path[n], int)


def _layer_path(stacked: Path, index: int) -> Path:
    """Inverse of _split_layer."""
    n = _stack_prefix(stacked)
    return stacked[:n] + (index,) + stacked[n:]


class _StackedFill:
    """Fills stacked parameters one layer slice at a time on their (sharded) device buffers, so
    the host holds one tensor at a time as with unstacked ones."""

    def __init__(self):
        self._set = {}

    def put(self, stacked: jax.Array, value: np.ndarray, index: int) -> jax.Array:
        sharding = stacked.sharding
        key = (stacked.shape, str(stacked.dtype), sharding)
        if key not in self._set:
            self._set[key] = jax.jit(
                lambda a, v, i: jax.lax.dynamic_update_index_in_dim(a, v, i, 0),
                out_shardings=sharding,
                donate_argnums=0,
            )
        return self._set[key](stacked, value, np.int32(index))


def _expected_hub_shape(port_shape: tuple[int, ...], conversion: str, config: ModelConfig):
    """A parameter's shape in the checkpoint's (PyTorch) layout."""
    if conversion == "linear":
        return tuple(reversed(port_shape))
    if conversion == "patch":
        v = config.vision
        return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    if conversion == "conv":
        return (port_shape[0], 1, port_shape[1])
    return tuple(port_shape)


# ------------------------------------------------------------------------------------------------
# Import.


def load_pretrained(
    directory: str | os.PathLike,
    *,
    param_dtype: str | None = None,
    dtype: str | None = None,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    remat: bool = False,
    vision_remat: bool = False,
    remat_policy: str = "full",
    attention: str = "auto",
    scan_layers: bool = True,
) -> Qwen2VL:
    """Loads a Qwen2-VL / Qwen2.5-VL checkpoint directory into the port.

    param_dtype / dtype default to float32 (the checkpoint's own dtype is converted); remat,
    vision_remat, remat_policy, attention and scan_layers are Qwen2VL's (stacked layers are
    filled one layer's tensor at a time). With a mesh,
    every parameter is placed directly on its shards. Raises on a missing file, a missing or
    misshapen tensor, or an unknown model type, naming it.
    """
    directory = os.fspath(directory)
    config = ModelConfig.from_pretrained(directory)
    config = config.replace(
        param_dtype=param_dtype or config.param_dtype, dtype=dtype or config.dtype
    )
    files = checkpoint_files(directory)
    abstract = nnx.eval_shape(
        lambda: Qwen2VL(
            config,
            rngs=nnx.Rngs(0),
            remat=remat,
            vision_remat=vision_remat,
            remat_policy=remat_policy,
            attention=attention,
            scan_layers=scan_layers,
        )
    )
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    shardings = None
    if mesh is not None:
        shardings = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
    filled: dict[Path, jax.Array] = {}
    layers_filled: dict[Path, set[int]] = {}  # stacked parameters: the layers read so far
    stacks = _StackedFill()
    unexpected: list[str] = []
    for file in files:
        for raw_key, tensor in iter_safetensors(file):
            key = normalise_key(raw_key)
            if _IGNORED.fullmatch(key):
                continue
            mapped = hub_key_to_path(key)
            if mapped is not None:
                mapped = (_to_group(mapped[0], config), mapped[1])
            split = None if mapped is None else _split_layer(mapped[0])
            if mapped is not None and mapped[0] not in flat and split and split[0] in flat:
                path, index = split
            elif mapped is not None and mapped[0] in flat:
                path, index = mapped[0], None
            else:
                if key == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: the embedding is the head
                unexpected.append(raw_key)
                continue
            conversion = mapped[1]
            var = flat[path]
            shape = var.get_value().shape
            layer_shape = shape if index is None else shape[1:]
            value = _TO_PORT[conversion](tensor)
            if value.shape != layer_shape or (index is not None and index >= shape[0]):
                expected = _expected_hub_shape(layer_shape, conversion, config)
                raise ValueError(
                    f"{file}: tensor {raw_key} has shape {tuple(tensor.shape)}, expected shape "
                    f"{expected} (parameter {'.'.join(map(str, mapped[0]))})"
                )
            value = np.asarray(value, dtype=var.get_value().dtype)
            target = shardings[path].get_value() if shardings is not None else None
            if index is None:
                filled[path] = (
                    jax.device_put(value, target) if target is not None else jnp.asarray(value)
                )
                continue
            if path not in filled:
                filled[path] = jnp.zeros(shape, value.dtype, device=target)
            filled[path] = stacks.put(filled[path], value, index)
            layers_filled.setdefault(path, set()).add(index)
    missing = []
    for path, var in flat.items():
        shape = var.get_value().shape
        if _stacked_layers(path):
            read = layers_filled.get(path, set())
            missing += [_layer_path(path, i) for i in range(shape[0]) if i not in read]
        elif path not in filled:
            missing.append(path)
    if missing:
        names = [_path_to_hub_key(_from_group(p, config))[0] for p in missing]
        raise ValueError(f"{directory}: checkpoint is missing tensors: {names}")
    if unexpected:
        log.warning(
            "%s: ignoring %d unknown tensors, e.g. %s", directory, len(unexpected), unexpected[:5]
        )
    for path, var in flat.items():
        flat[path] = var.replace(filled[path])
    state = nnx.from_flat_state(flat)
    return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------------------
# Export.


def export_tensors(model: Qwen2VL, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(hub key, array) for every parameter, converted back to the PyTorch layout; a stacked
    parameter gives one tensor per layer."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        if _stacked_layers(path):
            for i in range(value.shape[0]):
                yield _hub_tensor(model, _layer_path(path, i), value[i], dtype)
        else:
            yield _hub_tensor(model, path, value, dtype)


def _hub_tensor(model: Qwen2VL, path: Path, value, dtype: str | None) -> tuple[str, np.ndarray]:
    """One parameter (of one layer) as (hub key, array in the PyTorch layout)."""
    key, conversion = _path_to_hub_key(_from_group(path, model.config))
    if model.config.model_type in QWEN3_TYPES:
        key = qwen3_key(key)
    value = np.asarray(jax.device_get(value))
    if conversion == "linear":
        value = value.T
    elif conversion == "conv":
        value = value[:, None, :]
    elif conversion == "patch":
        v = model.config.vision
        value = value.T.reshape(
            v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size
        )
    if dtype is not None:
        value = value.astype(jnp.dtype(dtype))
    return key, np.ascontiguousarray(value)


def save_pretrained(
    model: Qwen2VL,
    directory: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 4 * 1024**3,
) -> None:
    """Writes config.json and hub-layout safetensors (sharded with an index past
    `max_shard_bytes`), and copies the tokenizer/processor files of `tokenizer_dir` if given."""
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config = model.config
    raw = config.to_hf_dict()
    if dtype is not None:
        raw["torch_dtype"] = dtype
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, value in export_tensors(model, dtype):
        if size and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, "model.safetensors"), metadata=metadata)
    else:
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(directory, name), metadata=metadata)
            for key, value in shard.items():
                weight_map[key] = name
                total += value.nbytes
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, name)
            if os.path.isfile(src):
                shutil.copy(src, os.path.join(directory, name))

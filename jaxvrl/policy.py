"""The policy model a config asks for: pretrained from `model.path`, or a random model of that
checkpoint's config (`model.init="random"`), sharded over the run's mesh, with its tokenizer.
Used by the trainer, `jaxvrl.evaluate` and the benchmarks."""

from __future__ import annotations

import os

import ml_collections
from flax import nnx

from jaxvrl import run_plan
from jaxvrl.data import prompts
from jaxvrl.parallel.mesh import mesh_from_config, rules_from_config
from model.config import ModelConfig
from model.hf import load_pretrained
from model.qwen2_vl import Qwen2VL
from model.sharding import shard_model


def has_weights(directory: str) -> bool:
    return any(
        os.path.isfile(os.path.join(directory, name))
        for name in ("model.safetensors", "model.safetensors.index.json")
    )


def load_model_for(config: ml_collections.ConfigDict, mesh=None, rules=None):
    """The policy model (pretrained from `model.path`, or random with `model.init="random"`),
    its tokenizer and the mesh it lives on."""
    if mesh is None:
        mesh = mesh_from_config(config.mesh)
        rules = rules_from_config(config.mesh.rules)
    m = config.model
    if not m.path or not os.path.isfile(os.path.join(m.path, "config.json")):
        raise FileNotFoundError(f"model.path {m.path!r} has no config.json")
    if m.init == "pretrained":
        if not has_weights(m.path):
            raise FileNotFoundError(
                f"model.path {m.path} has no safetensors weights; set model.init='random' to "
                "start from a random model of that config"
            )
        model = load_pretrained(
            m.path,
            param_dtype=m.param_dtype,
            dtype=m.dtype,
            mesh=mesh,
            rules=rules,
            **run_plan.model_options(config),
        )
    elif m.init == "random":
        model_config = ModelConfig.from_pretrained(m.path).replace(
            param_dtype=m.param_dtype, dtype=m.dtype
        )
        model = Qwen2VL(
            model_config, rngs=nnx.Rngs(int(config.seed)), **run_plan.model_options(config)
        )
        shard_model(model, mesh, rules)
    else:
        raise ValueError(f"model.init must be 'pretrained' or 'random', got {m.init!r}")
    tokenizer = prompts.load_tokenizer(m.tokenizer_path or m.path)
    return model, tokenizer, mesh

"""Scanned layers (model/stack.py, config model.scan_layers) against the unrolled ones: the same
logits and parameter gradients, the same cached decoding, the same Hugging Face export, and a
program that holds one decoder layer and one vision block.

Tolerance: 1e-5 of the largest reference magnitude, in float32. The same operations run in the
same order; only XLA's fusion choices differ between a loop body and the written-out layers.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import pytest
from flax import nnx
from model_fixtures import logits_and_gradients, tiny_checkpoint
from safetensors.numpy import load_file, save_file

from model import parity, stack
from model.hf import export_tensors, load_pretrained, save_pretrained

TOLERANCE = 1e-5


def close(got, want) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * scale)


def both_layouts(generation: str, **options):
    directory, _ = tiny_checkpoint(generation)
    return (
        load_pretrained(directory, scan_layers=True, **options),
        load_pretrained(directory, scan_layers=False, **options),
    )


def logits_and_grads(model, inp):
    """Logits of the input's valid tokens, and every parameter's gradient keyed by Hugging Face
    tensor name (so both layouts compare)."""
    logits, grads = logits_and_gradients(model, inp)
    return logits, dict(export_tensors(grads))


@pytest.mark.parametrize("generation, remat", [("qwen2_vl", False), ("qwen2_5_vl", True)])
def test_scanned_and_unrolled_layers_give_the_same_logits_and_gradients(generation, remat):
    scanned, unrolled = both_layouts(generation, remat=remat, vision_remat=remat)
    inp = next(i for i in parity.build_inputs(scanned.config) if i.name == "batch of two, padded")
    logits_s, grads_s = logits_and_grads(scanned, inp)
    logits_u, grads_u = logits_and_grads(unrolled, inp)
    close(logits_s, logits_u)
    assert grads_s.keys() == grads_u.keys()
    for name in grads_u:
        close(grads_s[name], grads_u[name])


def test_the_program_holds_one_layer_and_one_block():
    """The scanned forward's jaxpr has scans as long as the decoder and the vision tower, and
    as many matmuls as one layer and one block (plus the rest); the unrolled one a copy of each
    per layer."""
    scanned, unrolled = both_layouts("qwen2_5_vl")
    inp = next(i for i in parity.build_inputs(scanned.config) if i.name == "image+video")
    arrays = parity.port_arrays(scanned.config, inp)

    def jaxpr(model) -> str:
        graphdef, state = nnx.split(model)
        fn = lambda s: nnx.merge(graphdef, s)(  # noqa: E731
            inp.input_ids, arrays["positions"], inp.attention_mask, arrays["vision"]
        )
        return str(jax.make_jaxpr(fn)(state))

    scanned_text, unrolled_text = jaxpr(scanned), jaxpr(unrolled)
    lengths = {int(n) for n in re.findall(r"\blength=(\d+)", scanned_text)}
    cfg = scanned.config
    assert {cfg.text.num_layers, cfg.vision.depth} <= lengths
    layers = cfg.text.num_layers + cfg.vision.depth
    dots_scanned = scanned_text.count("dot_general[")
    dots_unrolled = unrolled_text.count("dot_general[")
    # Unrolled: (layers - 2) more copies of a layer's and a block's matmuls.
    assert dots_unrolled > dots_scanned and dots_scanned < dots_unrolled * 2 / layers + 20


def test_cached_decoding_is_the_same_in_both_layouts():
    scanned, unrolled = both_layouts("qwen2_vl")
    cfg = scanned.config
    inp = next(i for i in parity.build_inputs(cfg) if i.name == "batch of two, padded")
    arrays = parity.port_arrays(cfg, inp)
    lengths = inp.attention_mask.sum(1)
    tokens = np.random.default_rng(0).integers(20, cfg.text.vocab_size, size=(2, 4))

    def run(model):
        cache = model.init_cache(batch=2, slots=inp.input_ids.shape[1] + 4)
        hidden, cache = jax.jit(model.prefill)(
            inp.input_ids, arrays["positions"], inp.attention_mask, arrays["vision"], cache
        )
        out = [np.asarray(model.logits(hidden))]
        decode = jax.jit(model.decode)
        for step in range(tokens.shape[1]):
            pos = (arrays["deltas"] + lengths + step).astype(np.int32)
            hidden, cache = decode(
                tokens[:, step : step + 1], np.broadcast_to(pos[None, :, None], (3, 2, 1)), cache
            )
            out.append(np.asarray(model.logits(hidden)))
        return out, cache

    (got, cache_s), (want, cache_u) = run(scanned), run(unrolled)
    for a, b in zip(got, want, strict=True):
        close(a, b)
    assert cache_s.k.shape == (cfg.text.num_layers, *cache_s.k.shape[1:])
    close(cache_s.k, cache_u.k)


def test_both_layouts_export_the_same_checkpoint(tmp_path):
    """Export writes the hub's per-layer tensors from either layout, byte for byte the same, and
    the unrolled layout loads what the scanned one exported."""
    scanned, unrolled = both_layouts("qwen2_5_vl")
    save_pretrained(scanned, tmp_path / "scanned")
    save_pretrained(unrolled, tmp_path / "unrolled")
    a = load_file(os.path.join(tmp_path / "scanned", "model.safetensors"))
    b = load_file(os.path.join(tmp_path / "unrolled", "model.safetensors"))
    assert a.keys() == b.keys()
    assert "model.layers.1.mlp.up_proj.weight" in a and "visual.blocks.1.attn.qkv.weight" in a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    again = load_pretrained(tmp_path / "scanned", scan_layers=False)
    kernel = again.layers[1].mlp.up_proj.kernel[...]
    np.testing.assert_array_equal(np.asarray(kernel), a["model.layers.1.mlp.up_proj.weight"].T)
    first = stack.layer(scanned.layers, 1).mlp.up_proj.kernel[...]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(kernel))


def test_a_missing_layer_tensor_is_named(tmp_path):
    scanned, _ = both_layouts("qwen2_vl")
    save_pretrained(scanned, tmp_path)
    path = os.path.join(tmp_path, "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"missing tensors: \['model\.layers\.1\.self_attn\.k_proj"
    ):
        load_pretrained(tmp_path, scan_layers=True)

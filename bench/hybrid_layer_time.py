"""Where the tiny Qwen3.5 demo's extra time goes on a CPU: the decoder's forward and backward at
the demo's shapes, for the demo's tiny models (model/tiny.py, data.synthetic.model of
configs/demo.py), and the gated delta rule alone.

    python bench/hybrid_layer_time.py [--repeats 5] [--only "2 layers"]

Rows: the decoder (text only) on the RL step's two shapes, 16 prompts of 256 tokens and 192
completions of 32 tokens, forward and forward + backward, in float32, jitted, median of
`repeats` runs after a warm-up; then `chunked_gated_delta_rule` and `recurrent_gated_delta_rule`
on their own at the prompt shape, and one decode token. The models: Qwen3-VL (2 attention
layers), Qwen3.5 with 2 layers (DeltaNet, attention) and 4 layers ((DeltaNet, attention) x 2),
and the 4-layer Qwen3.5 with every layer attention (the DeltaNet layers' share), all with 4
attention heads of 32 dims (the demo's Qwen3.5 until commit df59f43); and the demo's 2-layer
Qwen3.5 now, 8 heads of 16 dims rotating in full. `--only` keeps the models whose label holds
the given text.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from model.config import ModelConfig  # noqa: E402
from model.delta_rule import chunked_gated_delta_rule, recurrent_gated_delta_rule  # noqa: E402
from model.qwen2_vl import Qwen2VL  # noqa: E402
from model.tiny import tiny_hf_config  # noqa: E402

SHAPES = {"prompts": (16, 256), "completions": (192, 32)}
DEMO = {"hidden_size": 128, "vision_depth": 4, "vision_width": 64, "initializer_range": 0.1}
MODELS = {
    "qwen3_vl, 2 layers": ("qwen3_vl", {"num_layers": 2}),
    "qwen3_5, 2 layers (lin, full)": ("qwen3_5", {"num_layers": 2}),
    "qwen3_5, 4 layers (lin, full) x 2": ("qwen3_5", {"num_layers": 4}),
    "qwen3_5, 4 layers all full": (
        "qwen3_5",
        {"num_layers": 4, "layer_types": ["full_attention"] * 4},
    ),
    "qwen3_5, 2 layers, 8 heads of 16": (
        "qwen3_5",
        {"num_layers": 2, "heads": 8, "head_dim": 16, "rotary_fraction": 1.0},
    ),
}


def timed(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoder_times(generation: str, kwargs: dict, repeats: int) -> dict[str, float]:
    config = ModelConfig.from_hf_dict(tiny_hf_config(generation, vocab_size=512, **DEMO, **kwargs))
    model = Qwen2VL(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def hidden(state, ids, positions, mask):
        return nnx.merge(graphdef, state)(ids, positions, mask)

    def loss(state, ids, positions, mask):
        return jnp.mean(hidden(state, ids, positions, mask) ** 2)

    forward, backward = jax.jit(hidden), jax.jit(jax.grad(loss))
    out = {}
    for name, (batch, length) in SHAPES.items():
        ids = jax.random.randint(jax.random.key(1), (batch, length), 10, 500)
        positions = jnp.broadcast_to(jnp.arange(length), (3, batch, length))
        # Left padding of a quarter of the rows, as the rollout's batches have.
        mask = jnp.arange(length)[None, :] >= jnp.where(jnp.arange(batch) % 4 == 0, 8, 0)[:, None]
        out[f"{name} forward"] = timed(forward, state, ids, positions, mask, repeats=repeats)
        out[f"{name} fwd+bwd"] = timed(backward, state, ids, positions, mask, repeats=repeats)
    return out


def rule_times(repeats: int) -> dict[str, float]:
    """The tiny Qwen3.5's DeltaNet sizes: 2 key heads of 16, 4 value heads of 24."""
    batch, length = SHAPES["prompts"]
    keys = jax.random.split(jax.random.key(2), 5)
    q = jax.random.normal(keys[0], (batch, length, 2, 16))
    k = jax.random.normal(keys[1], (batch, length, 2, 16))
    v = jax.random.normal(keys[2], (batch, length, 4, 24))
    g = -jax.nn.softplus(jax.random.normal(keys[3], (batch, length, 4)))
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], (batch, length, 4)))

    def loss(rule, *args):
        out, state = rule(*args)
        return jnp.mean(out**2) + jnp.mean(state**2)

    out = {}
    for name, rule in (
        ("chunked", chunked_gated_delta_rule),
        ("recurrent", recurrent_gated_delta_rule),
    ):
        fwd = jax.jit(rule)
        bwd = jax.jit(jax.grad(lambda *a, rule=rule: loss(rule, *a), argnums=(0, 1, 2, 3, 4)))
        out[f"{name} rule, prompts forward"] = timed(fwd, q, k, v, g, beta, repeats=repeats)
        out[f"{name} rule, prompts fwd+bwd"] = timed(bwd, q, k, v, g, beta, repeats=repeats)
    samples = SHAPES["completions"][0]
    one = [jnp.repeat(x[:, :1], samples // batch, axis=0) for x in (q, k, v, g, beta)]
    state = jnp.zeros((samples, 4, 16, 24))
    step = jax.jit(recurrent_gated_delta_rule)
    out["recurrent rule, one decode token of 192 samples"] = timed(
        step, *one, state, repeats=repeats
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="time only the models whose label holds this")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    print(f"jax {jax.__version__}, {os.cpu_count()} cores; median of {args.repeats} runs, ms")
    head = ["prompts fwd", "prompts f+b", "compl. fwd", "compl. f+b"]
    print(f"| {'decoder':<36} | " + " | ".join(f"{h:>11}" for h in head) + " |")
    print("|" + "-" * 38 + "|" + "|".join(["-" * 13] * 4) + "|")
    for label, (generation, kwargs) in MODELS.items():
        if args.only not in label:
            continue
        t = decoder_times(generation, kwargs, args.repeats)
        cells = [
            t["prompts forward"],
            t["prompts fwd+bwd"],
            t["completions forward"],
            t["completions fwd+bwd"],
        ]
        print(
            f"| {label:<36} | " + " | ".join(f"{1e3 * c:>11.1f}" for c in cells) + " |", flush=True
        )
    print()
    for name, seconds in rule_times(args.repeats).items():
        print(f"{name}: {1e3 * seconds:.2f} ms")


if __name__ == "__main__":
    main()

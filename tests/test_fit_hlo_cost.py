"""Device-memory and collective bytes of compiled programs with their loops at their trip counts
(jaxvrl/fit/hlo_cost.py), on the test process's CPU devices and on hand-written HLO in the form
the TPU compiler writes (no trip count annotated, memory spaces in the layouts)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from test_fit import ROOT, _tpu_env, needs_libtpu, tpu_rl_report

from jaxvrl.fit.hlo_cost import hlo_cost, type_bytes

A = jax.ShapeDtypeStruct((256, 1024), jnp.float32)
B = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)


def _scan(length: int):
    def loop(a, b):
        return jax.lax.scan(lambda x, _: (jnp.tanh(x @ b), None), a, None, length=length)[0]

    return jax.jit(loop).lower(A, B).compile()


def test_a_program_without_loops_costs_what_xla_counts():
    compiled = jax.jit(lambda a, b: jnp.tanh(a @ b) + 1).lower(A, B).compile()
    # XLA's CPU cost analysis and ours add up the same instructions (equal on the AMD VM; 1% for
    # another CPU's choice of fusions).
    xla = compiled.cost_analysis()["bytes accessed"]
    assert hlo_cost(compiled.as_text()).hbm_bytes == pytest.approx(xla, rel=0.01)
    # At least the operands and the result: 1 + 4 + 1 MiB.
    assert hlo_cost(compiled.as_text()).hbm_bytes >= (256 * 1024 * 2 + 1024 * 1024) * 4


def test_a_scan_costs_its_body_times_its_length():
    # (A scan of length 1 compiles without its loop.)
    two, three, seven = (hlo_cost(_scan(n).as_text()).hbm_bytes for n in (2, 3, 7))
    body = three - two
    # A step reads the carry and the weights and writes the carry: at least 1 + 4 + 1 MiB.
    assert body >= (256 * 1024 * 2 + 1024 * 1024) * 4
    assert seven == pytest.approx(two + 5 * body, rel=1e-6)
    # XLA's own count does not grow with the loop: the reason for this module.
    assert _scan(7).cost_analysis()["bytes accessed"] < 2 * body


def test_a_scanned_layer_reads_its_slice_of_the_stacked_weights():
    # A scan over 8 stacked 4 MiB weights, as over the decoder's layers: each step reads its
    # layer's slice (CPU: slice out, then the matmul and the tanh, ~16 MiB a step), not the
    # whole 32 MiB stack, which the counter took before (~300 MiB in all).
    stack = jax.ShapeDtypeStruct((8, 1024, 1024), jnp.float32)

    def layers(x, w):
        return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]

    cost = hlo_cost(jax.jit(layers).lower(A, stack).compile().as_text()).hbm_bytes
    assert 8 * 4 * 2**20 <= cost <= 8 * 20 * 2**20


def test_a_static_slice_reads_its_slice():
    # One layer's 4 MiB out of a 32 MiB stack, then a matmul. CPU: the slice copied out (4 MiB
    # read, 4 written), the matmul (1 + 4 read, 1 written): 14 MiB; the stack read whole would
    # make it 42.
    stack = jax.ShapeDtypeStruct((8, 1024, 1024), jnp.float32)
    compiled = jax.jit(lambda x, w: x @ w[3]).lower(A, stack).compile()
    assert hlo_cost(compiled.as_text()).hbm_bytes <= 16 * 2**20


def test_an_update_in_place_moves_the_update_not_the_buffer():
    # The decode's KV-cache append: a 1 MiB row written into a donated 64 MiB buffer.
    def append(cache, x, i):
        return jax.lax.dynamic_update_slice(cache, x[None], (i, 0, 0))

    cache = jax.ShapeDtypeStruct((64, 256, 1024), jnp.float32)
    index = jax.ShapeDtypeStruct((), jnp.int32)
    compiled = jax.jit(append, donate_argnums=0).lower(cache, A, index).compile()
    assert hlo_cost(compiled.as_text()).hbm_bytes == pytest.approx(2 * 2**20, rel=1e-3)


def test_an_all_gather_sends_three_quarters_of_its_result_over_four_chips():
    mesh = Mesh(np.array(jax.devices()[:4]), ("x",))
    a = jax.ShapeDtypeStruct(A.shape, A.dtype, sharding=NamedSharding(mesh, PartitionSpec("x")))
    b = jax.ShapeDtypeStruct(
        B.shape, B.dtype, sharding=NamedSharding(mesh, PartitionSpec(None, "x"))
    )

    def f(a, b):  # rows split over x: each chip needs all of b's columns
        return jax.lax.with_sharding_constraint(a @ b, NamedSharding(mesh, PartitionSpec("x")))

    cost = hlo_cost(jax.jit(f).lower(a, b).compile().as_text())
    assert cost.collectives == {"all-gather": pytest.approx(0.75 * 1024 * 1024 * 4)}
    assert cost.collective_bytes == pytest.approx(0.75 * 1024 * 1024 * 4)


def test_memory_spaces_other_than_device_memory_move_no_hbm_bytes():
    assert type_bytes("bf16[8,128]{1,0:T(8,128)(2,1)}") == 8 * 128 * 2
    assert type_bytes("bf16[8,128]{1,0:T(8,128)(2,1)S(1)}") == 0
    assert type_bytes("bf16[8,128]{1,0:T(8,128)(2,1)S(1)}", device_memory_only=False) == 2048
    assert type_bytes("(s32[], f32[2,3]{1,0}, pred[4])") == 4 + 24 + 4


# A TPU-style module: the while has no known_trip_count; its condition compares the counter with
# a constant (a scan of 5), or also exits when every sample is done (a decode loop of up to 9).
TPU_STYLE = """HloModule m, num_partitions=1

%body (p: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %p = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[1024]{0} get-tuple-element(%p), index=1
  %y = f32[1024]{0} fusion(%x), kind=kLoop, calls=%f
  ROOT %t = (s32[], f32[1024]{0}) tuple(%i, %y)
}

%cond (p: (s32[], f32[1024])) -> pred[] {
  %p = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%decode_cond (p: (s32[], f32[1024])) -> pred[] {
  %p = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(9)
  %lt = pred[] compare(%i, %n), direction=LT
  %x = f32[1024]{0} get-tuple-element(%p), index=1
  %z = f32[] constant(0)
  %any = pred[] compare(%z, %z), direction=EQ
  ROOT %both = pred[] and(%lt, %any)
}

ENTRY %main (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[1024]{0}) tuple(%zero, %x)
  %w = (s32[], f32[1024]{0}) while(%init), condition=%COND, body=%body
  ROOT %out = f32[1024]{0} get-tuple-element(%w), index=1
}
"""


def test_trip_counts_come_from_the_loop_condition_when_the_compiler_writes_none():
    # A trip: the fusion reads and writes 1024 floats; the condition compares two s32 into a
    # pred (9 bytes, evaluated once more than the body runs; the decode's also its second
    # compare's 9 and the `and`'s 3).
    step, check = 2 * 1024 * 4, 9
    scan = TPU_STYLE.replace("%COND", "%cond")
    assert hlo_cost(scan).hbm_bytes == 5 * step + 6 * check
    decode = TPU_STYLE.replace("%COND", "%decode_cond")
    check = 9 + 9 + 3
    assert hlo_cost(decode).hbm_bytes == 9 * step + 10 * check  # at its bound
    assert hlo_cost(decode, while_trips=3).hbm_bytes == 3 * step + 4 * check  # tokens asked for
    # A bound loop ignores while_trips (a scan runs its length whatever the decode does).
    assert hlo_cost(scan, while_trips=3).hbm_bytes == hlo_cost(scan).hbm_bytes


@needs_libtpu
def test_the_fit_check_times_each_tpu_program_at_the_chips_roofline(tiny_model):
    report, stdout = tpu_rl_report(tiny_model)
    programs = {p["name"]: p for p in report["programs"]}
    for p in report["programs"]:
        assert p["hbm_bytes_per_chip"] > 0
        assert p["memory_seconds"] == pytest.approx(p["hbm_bytes_per_chip"] / 2765e9)
        assert p["compute_seconds"] == pytest.approx(p["flops"] / 4 / 459e12)
        assert p["roofline_seconds"] == max(p["compute_seconds"], p["memory_seconds"])
        assert p["bound"] in ("compute", "memory")
    # XLA's TPU figures are there beside ours (its bytes count an operand once per tile it is
    # read for, so they run above ours: a lower bound, each operand read once per run).
    rollout = programs["rl/rollout"]
    assert rollout["xla_bytes_per_chip"] > 0 and rollout["xla_optimal_seconds"] > 0
    # FSDP over 4 chips: the train step gathers the weights and reduce-scatters the gradients.
    step = programs["rl/train_step"]
    assert step["collective_bytes_per_chip"] > 0 and step["collective_seconds"] > 0
    assert set(step["collectives"]) & {"all-gather", "reduce-scatter", "all-reduce"}
    assert "roofline" in stdout


# The rollout of a model whose weights outweigh its activations and the chip's on-chip memories
# (hidden 1,024, 4 layers, vocab 32,768, untied; float32 master weights, bfloat16 compute),
# compiled by libtpu for one chip; prints the bytes the decode loop moves per token (the loop
# priced at two trip counts) and the bound.
DECODE_BYTES = """
import json, sys
from jaxvrl import run_plan
from jaxvrl.fit import hardware
from jaxvrl.fit.check import _load_config, model_shape
from jaxvrl.fit.hlo_cost import hlo_cost
from jaxvrl.fit.programs import largest_example, stage_programs
from jaxvrl.parallel.mesh import mesh_from_config, rules_from_config
from model.sharding import activation_layout
from model.tiny import tiny_hf_config

directory, topology = sys.argv[1], sys.argv[2]
hidden, layers, vocab, samples, prompt, new = 1024, 4, 32768, 4, 64, 16
kv_heads, head_dim = 2, hidden // 4  # model.tiny's heads
with open(directory + "/config.json", "w") as f:
    json.dump(tiny_hf_config("qwen2_5_vl", hidden_size=hidden, num_layers=layers,
                             vocab_size=vocab), f)
config, _ = _load_config([
    "--config=configs/video_r1.py", f"--config.model.path={directory}", "--config.sft.steps=0",
    "--config.data.max_frames=4", "--config.data.video_min_pixels=3136",
    "--config.data.video_max_pixels=3136", "--config.data.batch_size=1",
    "--config.data.token_buckets=(64,)", "--config.data.patch_buckets=(512,)",
    "--config.rollout.prompt_buckets=(64,)", "--config.rollout.patch_buckets=(512,)",
    f"--config.rl.max_completion_tokens={new}", f"--config.rl.num_generations={samples}",
    "--config.rl.shuffled_generations=0", "--config.train.micro_batches=1",
])
assert (config.model.param_dtype, config.model.dtype) == ("float32", "bfloat16")
model_config = model_shape(config)
target = hardware.compile_target(topology)
mesh = mesh_from_config(config.mesh, devices=target.devices[:1])  # one chip
rules = rules_from_config(config.mesh.rules)
largest = largest_example(config.data, model_config.vision, text_tokens=16, target_tokens=8)
(stage,) = run_plan.plan_stages(config)
programs = stage_programs(config, stage, model_config, mesh, rules, largest)
next(programs)  # the resident state
rollout = next(p for p in programs if p.name == "rl/rollout")
with activation_layout(mesh, rules):
    text = rollout.jitted.lower(*rollout.args).compile().as_text()
per_token = hlo_cost(text, while_trips=9).hbm_bytes - hlo_cost(text, while_trips=8).hbm_bytes
weights = layers * (
    hidden * hidden * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    + hidden * hidden * 2 * 3  # gate, up, down (intermediate 2 x hidden)
) + hidden * vocab  # the LM head (the embedding reads one row per sample)
kv_cache = layers * 2 * samples * kv_heads * head_dim * (prompt + new)
print(json.dumps({"per_token": per_token, "bound": 2 * (weights + kv_cache)}))  # bfloat16
"""


@needs_libtpu
def test_the_decode_reads_per_token_its_weights_in_bfloat16_and_its_kv_cache(tmp_path):
    """Per generated token the rollout's decode loop reads about what it must: the decoder's
    weights in the compute dtype (bfloat16, not the float32 master copy the run trains) and the
    KV cache it attends to; at most 1.2x that (DECODE_BYTES above, on one chip of a v5p slice).
    It may read less: the compiler keeps some weights in on-chip memory across tokens (measured
    0.94x on 2026-12-05; counting each scanned layer's slice as its whole stack had given 1.68x)."""
    done = subprocess.run(
        [sys.executable, "-c", DECODE_BYTES, str(tmp_path), "v5p:2x2x1"],
        cwd=ROOT, env=_tpu_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.5 * figures["bound"] <= figures["per_token"] <= 1.2 * figures["bound"], figures

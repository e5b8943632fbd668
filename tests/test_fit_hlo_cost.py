"""Device-memory and collective bytes of compiled programs with their loops at their trip counts
(jaxvrl/fit/hlo_cost.py), on the test process's CPU devices and on hand-written HLO in the form
the TPU compiler writes (no trip count annotated, memory spaces in the layouts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from test_fit import needs_libtpu, tpu_rl_report

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

"""jaxvrl.fit.peak: the largest buffers at a compile's peak, read from XLA's dump files (here
written by hand in the format the TPU compiler writes; tests/test_fit.py reads real dumps)."""

from jaxvrl.fit.peak import peak_buffers, short_op

LIVE = """HloLiveRange (max 9):
  InstructionSequence:
    0:param
  BufferLiveRange:
    param{}:0-8
  Live ranges at 3 (peak):
    fusion.7.remat2{1}: 4096 bytes (cumulative: 4096 bytes)
    fusion.3{}: 2048 bytes (cumulative: 6144 bytes)
    fusion.4{}: 2048 bytes (cumulative: 8192 bytes)
    copy-start.38{0}: 100 bytes (cumulative: 8292 bytes)
    param.2{}: 64 bytes (cumulative: 8356 bytes)
  Stack trace breakdown for peak usage: 8 356 bytes
    main (100.0%, total: 8 356 bytes)
"""

BUFFERS = """BufferAssignment:
allocation 0: size 4096:
 value: <11 fusion.7.remat2{1} @0> (size=4096,offset=0): f32[2,16,32]{2,1,0:T(8,128)}
 value: <12 fusion.3 @0> (size=2048,offset=4096): bf16[2,16,32]{2,1,0:T(8,128)(2,1)}
 value: <13 fusion.4 @0> (size=2048,offset=6144): bf16[2,16,32]{2,1,0:T(8,128)(2,1)}
 value: <14 copy-start.38{0} @0> (size=100,offset=8192): f32[25]{0}
 value: <15 param.2 @0> (size=64,offset=8292): s32[16]{0}
"""

HLO = """HloModule jit_train_step
  %param.2 = s32[16]{0} parameter(0), metadata={op_name="batch[\\'input_ids\\']"}
  %fusion.3 = bf16[2,16,32]{2,1,0} fusion(%param.2), kind=kLoop, metadata={op_name="jit(step)/while/body/layer/mlp/dot_general" stack_frame_id=3}
  %fusion.4 = bf16[2,16,32]{2,1,0} fusion(%param.2), kind=kLoop, metadata={op_name="jit(step)/while/body/layer/mlp/dot_general" stack_frame_id=3}
  ROOT %fusion.7.remat2 = (f32[2]{0}, f32[2,16,32]{2,1,0}) fusion(%fusion.3), kind=kOutput, metadata={op_name="jit(step)/attention/bqd,bkd->bqk/dot_general"}
  %copy-start.38 = (f32[25]{0}, f32[25]{0}, u32[]) copy-start(%fusion.3)
"""  # noqa: E501 - XLA writes each instruction on one line


def _write(directory, prefix="module_0003.jit_train_step.cl_1.after_optimizations"):
    (directory / f"{prefix}-live-range.txt").write_text(LIVE)
    (directory / f"{prefix}-buffer-assignment.txt").write_text(BUFFERS)
    (directory / f"{prefix}.txt").write_text(HLO)


def test_largest_buffers_with_their_shapes_and_ops_same_op_and_shape_counted_together(tmp_path):
    _write(tmp_path)
    got = peak_buffers(str(tmp_path))
    assert [(b.bytes, b.count, b.shape, b.op) for b in got] == [
        (4096, 1, "f32[2,16,32]", "jit(step)/attention/bqd,bkd->bqk/dot_general"),
        (4096, 2, "bf16[2,16,32]", "jit(step)/while/body/layer/mlp/dot_general"),
        (100, 1, "f32[25]", "copy-start"),  # no op_name: the instruction's kind
        (64, 1, "s32[16]", "batch['input_ids']"),
    ]
    assert [b.bytes for b in peak_buffers(str(tmp_path), top=2)] == [4096, 4096]


def test_module_with_the_largest_peak_is_read_and_no_dump_gives_nothing(tmp_path):
    _write(tmp_path)
    small = tmp_path / "module_0001.jit_init.cl_1.after_optimizations-live-range.txt"
    small.write_text("  Live ranges at 0 (peak):\n    param.0{}: 8 bytes (cumulative: 8 bytes)\n")
    assert peak_buffers(str(tmp_path))[0].bytes == 4096
    assert peak_buffers(str(tmp_path / "missing")) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "m.after_optimizations-live-range.txt").write_text("HloLiveRange (max 0):\n")
    assert peak_buffers(str(empty)) == []


def test_short_op_keeps_the_last_components():
    assert short_op("jit(f)/while/body/attn/dot_general", 2) == ".../attn/dot_general"
    assert short_op("a/b", 3) == "a/b"

"""jaxvrl.fit.hardware: the chips' peaks behind perf/mfu and the topology names jaxvrl.fit takes."""

import dataclasses

import pytest

from jaxvrl.fit import hardware


@dataclasses.dataclass
class FakeDevice:
    device_kind: str


def test_model_flops_utilisation_divides_by_time_devices_and_peak():
    devices = [FakeDevice("TPU v5")] * 4  # v5p: 459 TFLOP/s bf16 per chip
    mfu = hardware.model_flops_utilisation(918e12, 1.0, devices)
    assert mfu == pytest.approx(918e12 / (4 * 459e12))


@pytest.mark.parametrize(
    "kind, peak",
    [("TPU v5 lite", 197e12), ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12)],
)
def test_known_device_kinds_have_their_bf16_peak(kind, peak):
    assert hardware.peak_flops(kind) == peak


def test_no_mfu_on_a_cpu():
    assert hardware.peak_flops("cpu") is None
    assert hardware.model_flops_utilisation(1e12, 1.0, [FakeDevice("cpu")]) is None


def test_cpu_target_uses_the_given_memory_per_device():
    target = hardware.compile_target("cpu", cpu_memory_bytes=3 << 30)
    assert target.platform == "cpu" and target.chip.memory_bytes == 3 << 30
    assert not target.compiler_checks_memory


@pytest.mark.parametrize("name", ["v9z:1x1", "h200x8", "tpu"])
def test_unknown_topologies_are_refused_by_name(name):
    with pytest.raises(hardware.UnknownTarget, match="unknown"):
        hardware.compile_target(name)

"""Does a config fit the hardware it names? Every program a run compiles, compiled ahead of time
from abstract shapes (no weights read, none allocated) for a TPU slice, a GPU node or this CPU.

    python -m jaxvrl.fit --config=configs/video_r1.py --topology=v5p:2x2x1 [--config.x=...] [--json]

Programs, per stage (the trainer's own functions, from jaxvrl/run_plan.py, steps.py and rollout/,
with the inputs the run would feed them): optimizer init; the SFT step; the rollout (vision, prefill
and decode with its KV cache, T-GRPO's shuffled companions included); reference and old log-probs;
the RL train step (its micro-batches in a scan). Inputs have the largest shapes the config produces:
the longest video the data settings allow (max_frames at the per-frame pixel budget) for every
prompt of a batch, prompts of `--text_tokens` text tokens besides the vision tokens, SFT targets of
`--target_tokens`, and completions of rl.max_completion_tokens, all rounded up to the config's
buckets.

Memory per chip: what the compiler's buffer assignment takes in device memory, arguments
included (the total of its memory-usage report; where a compiler writes none, the memory
analysis' arguments + outputs - donated (aliased) + temporaries, which equal it on CPU and GPU,
while on TPU the memory analysis counts more than the assignment holds in HBM), plus what stays
resident outside the program (the train state, reference parameters); the peak is the largest
over programs. A TPU compile refuses a program that does not fit its HBM (the verdict trusted
over any sum; the figure it quotes is that assignment's total); GPU and CPU compiles do not
refuse, so their totals are compared with the chip.

FLOPs: matmul FLOPs of the traced program with every loop's trip count (jaxvrl/fit/flops.py; the
rollout's decode loop counted at max_completion_tokens); XLA's own cost analysis, which counts
a loop body once, is reported beside it where the backend gives one.

The model's shape: `model.path`'s config.json, else the published shape `model.shape` names.
Exit status: 0 fits, 1 does not fit, 2 bad input (unknown topology or config key).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from jaxvrl.fit import compiler_log, hlo_cost, predict
from jaxvrl.fit.peak import PeakBuffer, assigned_bytes, dump_options, peak_buffers, short_op
from jaxvrl.fit.programs import Program, largest_example, per_device_bytes, stage_programs

GIB = 1 << 30
log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Compiling and measuring.


@dataclasses.dataclass
class Result:
    """Per-chip figures of one compiled program (bytes), or the compiler's refusal."""

    name: str
    compile_seconds: float
    flops: float  # matmul FLOPs of one run, all chips together (flops.py)
    xla_flops_per_chip: float | None  # XLA's cost analysis (loop bodies counted once)
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    resident_outside: int = 0  # train state etc. alive during the program but not its argument
    refused: str | None = None  # the compiler's out-of-memory message
    needed: int | None = None  # from a refusal: what the compiler needed and had
    available: int | None = None
    runs_per_step: int = 1
    # The largest buffers alive at the program's peak (of the assignment a refusal tried).
    peak_buffers: list[PeakBuffer] = dataclasses.field(default_factory=list)
    # The device memory of the compiler's own buffer assignment, arguments included.
    assigned: int | None = None
    # The partitioner's involuntary full rematerialisations (each a whole tensor replicated on
    # every device before it is split again), with their warnings.
    involuntary_remats: int = 0
    remat_lines: list[str] = dataclasses.field(default_factory=list)
    # Per chip, with every loop at its trip count (hlo_cost.py): device-memory bytes read and
    # written, bytes sent by collectives (and by kind); XLA's own bytes and (TPU) optimal
    # seconds, which count a loop body once.
    hbm_bytes: float | None = None
    collective_bytes: float | None = None
    collectives: dict[str, float] = dataclasses.field(default_factory=dict)
    xla_bytes_per_chip: float | None = None
    xla_optimal_seconds: float | None = None
    # One more trip of the program's loop that exits on data (the decode: one more completion
    # token): its matmul FLOPs (all chips) and device-memory bytes per chip; None without one.
    token_flops: float | None = None
    token_hbm_bytes: float | None = None

    @property
    def program_bytes(self) -> int:
        """The compiler's buffer assignment in device memory, else the memory analysis' sum."""
        if self.assigned is not None:
            return self.assigned
        if self.refused is not None and self.needed is not None:
            return self.needed
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @property
    def peak(self) -> int:
        return self.program_bytes + self.resident_outside


_OOM = re.compile(
    r"required for [^(]*\(([\d.]+)([GMK])\) exceeds available HBM \(([\d.]+)([GMK])\)"
)
_UNITS = {"G": GIB, "M": 1 << 20, "K": 1 << 10}


def _refusal(message: str) -> tuple[int | None, int | None]:
    m = _OOM.search(message)
    if not m:
        return None, None
    return (
        int(float(m.group(1)) * _UNITS[m.group(2)]),
        int(float(m.group(3)) * _UNITS[m.group(4)]),
    )


def resident_beside(program: Program, resident: dict[str, Any], arguments: int | None) -> int:
    """Bytes per chip of the run's resident state alive beside a program's own buffers: the
    state it neither takes nor makes, plus what the compiled program leaves out of the state it
    takes (XLA drops an argument it never reads, e.g. tx.init's parameter values)."""
    other = sum(
        per_device_bytes(v)
        for k, v in resident.items()
        if k not in program.takes and k not in program.makes
    )
    if arguments is None:
        return other
    taken = sum(per_device_bytes(resident[k]) for k in program.takes if k in resident)
    return other + max(0, taken - arguments)


def compile_program(program: Program, resident: dict[str, Any]) -> tuple[Result, Any]:
    """Traces, counts FLOPs, compiles; returns the figures and the compiled program (or None)."""
    from jaxvrl.fit.flops import matmul_flops

    start = time.perf_counter()
    traced = program.jitted.trace(*program.args)
    flops = matmul_flops(traced.jaxpr, program.while_trips)
    token_flops = matmul_flops(traced.jaxpr, program.while_trips + 1) - flops
    result = Result(
        program.name, 0.0, flops, None, resident_outside=resident_beside(program, resident, None),
        runs_per_step=program.runs_per_step,
    )  # fmt: skip
    dump = tempfile.mkdtemp(prefix="jaxvrl_fit_")
    log_ = compiler_log.Captured()
    try:
        with compiler_log.captured() as log_:
            compiled = traced.lower().compile(compiler_options=dump_options(dump))
    except Exception as e:  # the TPU compiler's out-of-memory refusal
        _read_remats(result, log_.text)
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
            shutil.rmtree(dump, ignore_errors=True)
            raise
        result.compile_seconds = time.perf_counter() - start
        result.refused = message.splitlines()[0][:400]
        result.needed, result.available = _refusal(message)
        _read_dump(result, dump)
        return result, None
    result.compile_seconds = time.perf_counter() - start
    _read_remats(result, log_.text)
    _read_dump(result, dump)
    memory = compiled.memory_analysis()
    if memory is not None:
        result.arguments = int(memory.argument_size_in_bytes)
        result.outputs = int(memory.output_size_in_bytes)
        result.aliased = int(memory.alias_size_in_bytes)
        result.temporaries = int(memory.temp_size_in_bytes)
        result.resident_outside = resident_beside(program, resident, result.arguments)
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends have none
        cost = None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if cost and "flops" in cost:
        result.xla_flops_per_chip = float(cost["flops"])
    if cost:
        result.xla_bytes_per_chip = _float_or_none(cost.get("bytes accessed"))
        result.xla_optimal_seconds = _float_or_none(cost.get("optimal_seconds"))
    text = compiled.as_text()
    traffic = hlo_cost.hlo_cost(text, while_trips=program.while_trips)
    if token_flops > 0:
        more = hlo_cost.hlo_cost(text, while_trips=program.while_trips + 1)
        result.token_flops = token_flops
        result.token_hbm_bytes = more.hbm_bytes - traffic.hbm_bytes
    result.hbm_bytes = traffic.hbm_bytes
    result.collective_bytes = traffic.collective_bytes
    result.collectives = traffic.collectives
    return result, compiled


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def roofline(r: Result, chip, chips: int) -> dict[str, float | str | None]:
    """Seconds of one run of a program per chip at the chip's peaks: compute (its matmul FLOPs
    / peak bf16 FLOP/s), memory (its HBM bytes / bandwidth), `roofline_seconds` the larger of
    the two and `bound` which; collectives (bytes sent / interconnect bandwidth) beside them.
    None where the chip has no such figure (a CPU) or the program was refused."""
    out: dict[str, float | str | None] = {
        "compute_seconds": None,
        "memory_seconds": None,
        "collective_seconds": None,
        "roofline_seconds": None,
        "bound": None,
    }
    if chip.peak_bf16_flops > 0:
        out["compute_seconds"] = r.flops / chips / chip.peak_bf16_flops
    if chip.hbm_bytes_per_second and r.hbm_bytes is not None:
        out["memory_seconds"] = r.hbm_bytes / chip.hbm_bytes_per_second
    if chip.interconnect_bytes_per_second and r.collective_bytes is not None:
        out["collective_seconds"] = r.collective_bytes / chip.interconnect_bytes_per_second
    if out["compute_seconds"] is not None and out["memory_seconds"] is not None:
        compute, memory = out["compute_seconds"], out["memory_seconds"]
        out["roofline_seconds"] = max(compute, memory)
        out["bound"] = "compute" if compute >= memory else "memory"
    return out


def _read_remats(result: Result, text: str) -> None:
    result.involuntary_remats = compiler_log.involuntary_remats(text)
    result.remat_lines = compiler_log.remat_lines(text)


def _read_dump(result: Result, dump: str) -> None:
    """The dump's peak buffers and assigned bytes into `result`; the dump is removed. A dump XLA
    did not write (or wrote in a form we cannot read) leaves them empty rather than failing."""
    try:
        result.peak_buffers = peak_buffers(dump)
        result.assigned = assigned_bytes(dump)
    except (OSError, ValueError) as e:
        log.warning("could not read the buffer assignment in %s: %s", dump, e)
    finally:
        shutil.rmtree(dump, ignore_errors=True)


def fit_report(
    config,
    target,
    largest_options: dict[str, Any] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> dict[str, Any]:
    """Compiles every program of `config`'s run for `target` (hardware.Target); the report."""
    from jaxvrl import run_plan
    from jaxvrl.parallel.mesh import mesh_from_config, rules_from_config
    from model.sharding import activation_layout

    model_config = model_shape(config)
    mesh = mesh_from_config(config.mesh, devices=target.devices)
    rules = rules_from_config(config.mesh.rules)
    options = dict(largest_options or {})
    maximum = int(config.rl.max_completion_tokens)
    completion_tokens = min(int(options.pop("completion_tokens", 0) or maximum), maximum)
    largest = largest_example(config.data, model_config.vision, **options)
    results: list[Result] = []
    resident_bytes: dict[str, int] = {}
    for stage in run_plan.plan_stages(config):
        gen = stage_programs(config, stage, model_config, mesh, rules, largest)
        _, resident = next(gen)
        resident_bytes.update(
            {f"{stage.name}/{k}": per_device_bytes(v) for k, v in resident.items()}
        )
        send = None
        while True:
            try:
                program = gen.send(send)
            except StopIteration:
                break
            if program.name == "rl/rollout":  # the decode loop at the tokens asked for
                program = dataclasses.replace(program, while_trips=max(completion_tokens - 1, 1))
            log.info("compiling %s", program.name)
            with activation_layout(mesh, rules):
                result, compiled = compile_program(program, resident)
            results.append(result)
            if on_result is not None:
                on_result(result)
            send = None if compiled is None else compiled.output_shardings
    chip = target.chip
    fits = all(r.refused is None and r.peak <= chip.memory_bytes for r in results)
    step_flops = {}
    for stage in {r.name.split("/")[0] for r in results}:
        step_flops[stage] = sum(
            r.flops * r.runs_per_step for r in results if r.name.startswith(stage + "/")
        )
    programs = [_result_dict(r, chip, len(target.devices)) for r in results]
    stages = {}
    for stage in run_plan.plan_stages(config):
        tokens = predict.tokens_per_step(stage.name, config, largest, completion_tokens)
        stages[stage.name] = predict.predict_stage(
            programs, stage.name, len(target.devices), chip.peak_bf16_flops, tokens
        )
    main = stages.get("rl") or stages.get("sft") or {}
    return {
        "config": "",
        "topology": target.name,
        "chips": len(target.devices),
        "chip": chip.name,
        "chip_memory_gib": chip.memory_bytes / GIB,
        "mesh": dict(mesh.shape),
        "model": _model_name(config, model_config),
        "largest_example": {
            "grids": [list(g) for g in largest.grids],
            "patches": largest.patches,
            "prompt_tokens": largest.prompt_tokens,
            "sft_tokens": largest.sft_tokens,
        },
        "resident_gib": {k: v / GIB for k, v in resident_bytes.items()},
        "programs": programs,
        "peak_gib": max((r.peak for r in results), default=0) / GIB,
        "step_flops": step_flops,
        "involuntary_remats": sum(r.involuntary_remats for r in results),
        "completion_tokens": completion_tokens,
        # The RL step's prediction (the SFT step's when there is no RL stage), and each stage's.
        "predicted_step_seconds": main.get("predicted_step_seconds"),
        "tokens_per_step": main.get("tokens_per_step"),
        "predicted_tokens_per_second_per_chip": main.get("predicted_tokens_per_second_per_chip"),
        "predicted_mfu": main.get("predicted_mfu"),
        "predicted": stages,
        "fits": fits,
    }


def _result_dict(r: Result, chip, chips: int) -> dict[str, Any]:
    out = {
        "name": r.name,
        "fits": r.refused is None and r.peak <= chip.memory_bytes,
        "peak_gib": r.peak / GIB,
        "arguments_gib": r.arguments / GIB,
        "outputs_gib": r.outputs / GIB,
        "aliased_gib": r.aliased / GIB,
        "temporaries_gib": r.temporaries / GIB,
        "resident_outside_gib": r.resident_outside / GIB,
        "flops": r.flops,
        "xla_flops_per_chip": r.xla_flops_per_chip,
        "runs_per_step": r.runs_per_step,
        "compile_seconds": round(r.compile_seconds, 2),
        "assigned_gib": None if r.assigned is None else r.assigned / GIB,
        "peak_buffers": [b.as_dict() for b in r.peak_buffers],
        "involuntary_remats": r.involuntary_remats,
        "remat_lines": r.remat_lines,
        "hbm_bytes_per_chip": r.hbm_bytes,
        "collective_bytes_per_chip": r.collective_bytes,
        "collectives": r.collectives,
        "xla_bytes_per_chip": r.xla_bytes_per_chip,
        "xla_optimal_seconds": r.xla_optimal_seconds,
        "token_flops": r.token_flops,
        "token_hbm_bytes_per_chip": r.token_hbm_bytes,
        **roofline(r, chip, chips),
    }
    if r.refused is not None:
        out["refused"] = r.refused
        out["needed_gib"] = None if r.needed is None else r.needed / GIB
        out["available_gib"] = None if r.available is None else r.available / GIB
    return out


def model_shape(config):
    """The ModelConfig of `model.path`'s config.json, else of the published `model.shape`."""
    from model.config import ModelConfig
    from model.shapes import PUBLISHED, published_config

    path = str(config.model.path or "")
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return ModelConfig.from_pretrained(path)
    shape = str(config.model.get("shape", "") or "")
    if not shape:
        raise ValueError(
            "no model shape: set --config.model.path to a directory with config.json or "
            f"--config.model.shape to a published shape ({', '.join(PUBLISHED)})"
        )
    return published_config(shape)


def _model_name(config, model_config) -> str:
    path = str(config.model.path or "")
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return path
    return str(config.model.get("shape", ""))


# ------------------------------------------------------------------------------------------------
# Output.


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table: one line per program, per chip."""
    lines = [
        f"{report['config']} on {report['topology']}: {report['chips']} x {report['chip']} "
        f"({report['chip_memory_gib']:.1f} GiB each), mesh {report['mesh']}, "
        f"model {report['model']}",
        "largest example: {grids} -> {patches} patches, {prompt_tokens} prompt tokens, "
        "{sft_tokens} SFT tokens".format(**report["largest_example"]),
        "resident per chip: "
        + ", ".join(f"{k} {v:.2f} GiB" for k, v in report["resident_gib"].items()),
        "",
        f"{'program':<24}{'args':>8}{'out':>8}{'alias':>8}{'temp':>9}{'assigned':>10}"
        f"{'other':>8}{'peak':>9}{'TFLOP':>10}{'compile':>9}  verdict",
        "(GiB per chip: the memory analysis' arguments, outputs, donated and temporaries; the "
        "buffer assignment's total; resident beside it; peak. TFLOP: all chips, one run)",
    ]
    for p in report["programs"]:
        verdict = "fits" if p["fits"] else "NO"
        if "refused" in p:
            verdict = "REFUSED by the compiler"
            if p.get("needed_gib") is not None:
                verdict += f": needs {p['needed_gib']:.2f} of {p['available_gib']:.2f} GiB"
        lines.append(
            f"{p['name']:<24}{p['arguments_gib']:8.2f}{p['outputs_gib']:8.2f}"
            f"{p['aliased_gib']:8.2f}{p['temporaries_gib']:9.2f}"
            f"{p['peak_gib'] - p['resident_outside_gib']:10.2f}{p['resident_outside_gib']:8.2f}"
            f"{p['peak_gib']:9.2f}{p['flops'] / 1e12:10.4g}"
            f"{p['compile_seconds']:8.1f}s  {verdict}"
        )
    for p in report["programs"]:
        if p["fits"] and p["peak_gib"] < report["peak_gib"]:
            continue  # the largest buffers of what does not fit and of the peak program
        lines.append("")
        lines.append(f"largest buffers at the peak of {p['name']} (GiB per chip):")
        for b in p.get("peak_buffers", [])[:6]:
            count = f"{b['count']} x " if b["count"] > 1 else ""
            lines.append(f"  {b['gib']:8.2f}  {count}{b['shape'] or '?'}  {short_op(b['op'], 4)}")
    timed = [p for p in report["programs"] if p.get("roofline_seconds") is not None]
    if timed:
        lines.append("")
        lines.append(
            f"{'per chip, one run':<24}{'HBM GB':>9}{'coll GB':>9}{'compute':>10}{'memory':>10}"
            f"{'coll':>10}{'roofline':>10}{'XLA opt':>10}  bound"
        )
        lines.append(
            "(HBM and collective bytes with loops at their trip counts; seconds at the chip's "
            "peak FLOP/s, HBM and interconnect bandwidth; XLA's optimal seconds count a loop "
            "body once)"
        )
        for p in timed:
            optimal = p["xla_optimal_seconds"]
            collective = p["collective_seconds"]
            lines.append(
                f"{p['name']:<24}{p['hbm_bytes_per_chip'] / 1e9:9.2f}"
                f"{(p['collective_bytes_per_chip'] or 0) / 1e9:9.2f}"
                f"{p['compute_seconds']:10.4f}{p['memory_seconds']:10.4f}"
                f"{'-' if collective is None else f'{collective:.4f}':>10}"
                f"{p['roofline_seconds']:10.4f}"
                f"{'-' if optimal is None else f'{optimal:.4f}':>10}  {p['bound']}"
            )
        for p in timed:
            if p.get("token_hbm_bytes_per_chip") is not None:
                lines.append(
                    f"{p['name']}: one more completion token reads "
                    f"{p['token_hbm_bytes_per_chip'] / 1e9:.3f} GB per chip and runs "
                    f"{p['token_flops'] / 1e12:.4g} TFLOP (all chips)"
                )
    remats = [p for p in report["programs"] if p["involuntary_remats"]]
    if remats:
        lines.append("")
        lines.append("involuntary full rematerialisations (the partitioner replicates a tensor):")
        for p in remats:
            lines.append(f"  {p['name']}: {p['involuntary_remats']}")
            lines.extend(f"    {line[:200]}" for line in p["remat_lines"][:3])
    lines.append("")
    for stage, flops in report["step_flops"].items():
        lines.append(f"{stage} step: {flops / 1e12:.4g} TFLOP (all chips, every program it runs)")
    for stage, guess in report.get("predicted", {}).items():
        if not guess:
            continue
        split = ", ".join(f"{k} {v:.3f} s" for k, v in guess["split_seconds"].items())
        lines.append(
            f"{stage} step predicted at the roofline: {guess['predicted_step_seconds']:.3f} s "
            f"({split}; decode at {report['completion_tokens']} tokens), "
            f"{guess['tokens_per_step']} tokens, "
            f"{guess['predicted_tokens_per_second_per_chip']:.0f} tokens/s per chip, "
            f"MFU {guess['predicted_mfu']:.1%} (host work not included)"
        )
    lines.append(f"involuntary rematerialisations: {report['involuntary_remats']}")
    lines.append(
        f"peak {report['peak_gib']:.2f} GiB per chip of {report['chip_memory_gib']:.1f}: "
        + ("FITS" if report["fits"] else "DOES NOT FIT")
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line.


def _split_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Our own flags, and the --config / --config.x ones left for ml_collections."""
    ours: dict[str, str] = {}
    rest: list[str] = []
    known = (
        "topology", "json", "media", "text_tokens", "target_tokens", "memory_gib",
        "completion_tokens",
    )  # fmt: skip
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if name in known:
            ours[name] = arg.split("=", 1)[1] if "=" in arg else "true"
        else:
            rest.append(arg)
    return ours, rest


def _load_config(flags: list[str]):
    """The config and overrides through ml_collections (an unknown key raises)."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "recipe config",
        flag_values=values,
        lock_config=True,
        sys_argv=["fit", *flags],  # overrides are read from here, not from sys.argv
    )
    values(["fit", *flags])
    if values.config is None:
        raise ValueError("--config=CONFIG is required")
    config = values.config
    name = next((f.split("=", 1)[1] for f in flags if f.startswith("--config=")), "")
    return config, name


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = _split_flags(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jaxvrl.fit import hardware

    try:
        try:
            config, name = _load_config(rest)
        except (AttributeError, KeyError) as e:  # config_flags' error for an unknown key
            field = (re.findall(r"[A-Za-z_]\w*", str(e)) or ["?"])[0]
            flag = [a.split("=")[0] for a in rest if a.split("=")[0].endswith("." + field)]
            raise ValueError(
                f"unknown config key {' '.join(flag) or field!r} (the fields are those of the "
                "recipe file and configs/base.py)"
            ) from None
        if "topology" not in ours:
            raise ValueError("--topology=NAME is required (cpu, v5p:2x2x1, h100x8, ...)")
        memory = ours.get("memory_gib")
        target = hardware.compile_target(
            ours["topology"], None if memory is None else int(float(memory) * GIB)
        )
        if memory is not None:
            target.chip = dataclasses.replace(target.chip, memory_bytes=int(float(memory) * GIB))
        options = {
            "media": ours.get("media", "video"),
            "text_tokens": int(ours.get("text_tokens", 512)),
            "target_tokens": int(ours.get("target_tokens", 512)),
            "completion_tokens": int(ours.get("completion_tokens", 0)),
        }
        model_shape(config)
    except Exception as e:  # bad input: unknown topology, config key, shape; absl flag errors
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jaxvrl.fit: {message}", file=sys.stderr)
        return 2

    def progress(r: Result) -> None:
        state = "refused" if r.refused else f"peak {r.peak / GIB:.2f} GiB"
        print(f"compiled {r.name} in {r.compile_seconds:.1f} s: {state}", file=sys.stderr)

    report = fit_report(config, target, options, on_result=progress)
    report["config"] = name
    print(format_report(report), flush=True)
    if "json" in ours:
        print(json.dumps(report))
    return 0 if report["fits"] else 1

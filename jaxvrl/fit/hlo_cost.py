"""Device-memory traffic and collective traffic of a compiled program, read from its optimised HLO
with every loop at its trip count.

XLA's `compiled.cost_analysis()` gives "bytes accessed", but counts a while loop's body once
whatever its trip count (a scan over 16 micro-batches reports the bytes of one; the rollout's
decode loop, the bytes of one token). Here the compiled module's text is walked instead, the
way XLA's own cost analysis adds up a program: every instruction that runs on its own (a fusion,
a custom call, a copy, a collective; not the instructions inside a fusion) reads its operands
from device memory and writes its outputs there; a while loop costs its body times its trip
count (the compiler's `known_trip_count`, else its condition's bound; a loop that also exits on
data, the decode loop, at most `while_trips`), a conditional its most expensive branch. Buffers
the TPU compiler placed in on-chip memory (a layout's memory space `S(n)`, n > 0) move no HBM
bytes. A slice taken of an operand (slice, dynamic-slice, gather; inside a fusion or a fusion
nested in it) reads the slice: a scanned layer reads its own weights, not the stack of every
layer's; an update written in place (dynamic-update-slice) moves the update, not the buffer.

    cost = hlo_cost(compiled.as_text(), while_trips=768)
    cost.hbm_bytes, cost.collective_bytes, cost.collectives  # per chip

Collectives (all-gather, all-reduce, reduce-scatter, all-to-all, collective-permute, and their
asynchronous -start forms) also count the bytes each chip sends over the interconnect, by the
ring algorithm's volumes for a group of n chips: all-gather (n-1)/n of its output, reduce-scatter
(n-1)/n of its input, all-reduce twice (n-1)/n of its operand, all-to-all (n-1)/n of it,
collective-permute all of it.
"""

from __future__ import annotations

import dataclasses
import math
import re

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1,
    "tf32": 4, "token": 0,
}  # fmt: skip

# One array type: dtype[dims]{layout}, the layout optional (it may hold a memory space S(n)).
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')

# Instructions that move no data of their own (aliases, views, bookkeeping).
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "partition-id", "replica-id", "iota", "opt-barrier", "add-dependency", "domain",
    "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
    "async-done", "send-done", "recv-done",
}  # fmt: skip
# Instructions that read only the part of their first operand they return.
_SLICES = ("slice", "dynamic-slice", "gather")
_COLLECTIVES = {
    "all-gather", "all-gather-start", "all-reduce", "all-reduce-start", "reduce-scatter",
    "all-to-all", "collective-permute", "collective-permute-start",
}  # fmt: skip


@dataclasses.dataclass
class HloCost:
    """Per chip: bytes read from and written to device memory, bytes sent by collectives (and
    by kind), with every loop at its trip count."""

    hbm_bytes: float = 0.0
    collective_bytes: float = 0.0
    collectives: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, other: HloCost, times: float = 1.0) -> None:
        self.hbm_bytes += times * other.hbm_bytes
        self.collective_bytes += times * other.collective_bytes
        for k, v in other.collectives.items():
            self.collectives[k] = self.collectives.get(k, 0.0) + times * v


@dataclasses.dataclass
class _Instruction:
    name: str
    type_text: str
    opcode: str
    operands: list[str]
    attributes: str
    root: bool = False


def _split_type(rest: str) -> tuple[str, str]:
    """`(s32[], f32[4]{0}) while(...)` -> the type text and what follows it."""
    rest = rest.strip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].strip()
    head, _, tail = rest.partition(" ")
    return head, tail.strip()


def _operands(text: str) -> tuple[list[str], str]:
    """The names inside the opcode's parentheses, and the attributes after them."""
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        depth += ch in "({["
        depth -= ch in ")}]"
        if depth == 0:
            end = i
            break
    inner = text[1:end]
    names = re.findall(r"%([\w.\-]+)", inner)
    if not names:  # older text: operands written as `f32[4] name`
        names = [p.strip().split(" ")[-1] for p in inner.split(",") if p.strip()]
    return names, text[end + 1 :]


def parse_computations(text: str) -> tuple[dict[str, list[_Instruction]], str | None]:
    """The module's computations by name (instructions in order) and the entry's name."""
    computations: dict[str, list[_Instruction]] = {}
    entry = None
    current: list[_Instruction] | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), [])
            if header.group(1):
                entry = header.group(2)
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is None:
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        type_text, rest = _split_type(m.group(3))
        opcode, _, after = rest.partition("(")
        operands, attributes = _operands("(" + after)
        current.append(
            _Instruction(
                m.group(2), type_text, opcode.strip(), operands, attributes, bool(m.group(1))
            )
        )
    return computations, entry


def type_bytes(type_text: str, device_memory_only: bool = True) -> float:
    """Bytes of a (tuple) type; arrays placed in another memory space (S(1) and up: the TPU's
    on-chip memories) count 0 when `device_memory_only`."""
    total = 0.0
    for dtype, dims, layout in _ARRAY.findall(type_text):
        if dtype not in _DTYPE_BYTES:
            continue
        space = re.search(r"S\((\d+)\)", layout or "")
        if device_memory_only and space and int(space.group(1)) > 0:
            continue
        total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _called(attributes: str, key: str) -> list[str]:
    """The computations an attribute names: `key=%name` or `key={%a, %b}`."""
    m = re.search(r"\b" + key + r"=(\{[^}]*\}|%?[\w.\-]+)", attributes)
    if not m:
        return []
    names = m.group(1).strip("{}").split(",")
    return [name.strip().lstrip("%") for name in names if name.strip()]


def group_size(attributes: str, default: int) -> int:
    """Chips in each group of a collective, from its replica_groups (explicit lists, the iota
    form [groups,size]<=[...], or the mesh form mesh['a'=2,'b'=4] {'b'})."""
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attributes)
    if iota:
        return int(iota.group(2))
    explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
    if explicit:
        return max(1, len([x for x in explicit.group(1).split(",") if x]))
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
    if mesh:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
        named = re.findall(r"'(\w+)'", mesh.group(2))
        return max(1, math.prod(int(sizes.get(n, 1)) for n in named))
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attributes)
    if pairs:
        return 2
    return default


def loop_trips(
    attributes: str,
    computations: dict[str, list[_Instruction]],
    conditions: list[str],
    while_trips: int | None,
) -> int:
    """A while loop's trip count: the compiler's `known_trip_count` (the CPU and GPU compilers
    write it), else the bound of its condition's `counter < constant` (the TPU compiler's scans
    and fori_loops), capped at `while_trips` when the condition also exits on data (the decode
    loop stops when every sample has); `while_trips` (at least 1) when neither is written."""
    known = _TRIP.search(attributes)
    if known:
        return int(known.group(1))
    body = computations.get(conditions[0], []) if conditions else []
    values = {i.name: i for i in body}
    bound, compares = None, 0
    for inst in body:
        if inst.opcode != "compare":
            continue
        compares += 1
        direction = re.search(r"direction=(\w+)", inst.attributes)
        for operand in inst.operands:
            const = values.get(operand)
            if const is None or const.opcode != "constant" or not direction:
                continue
            value = _constant_value(const)
            if value is not None and direction.group(1) in ("LT", "GT"):
                bound = value if bound is None else max(bound, value)
    data_dependent = compares > 1 or any(i.opcode in ("and", "or", "reduce") for i in body)
    if bound is None:
        return max(1, while_trips or 1)
    if data_dependent and while_trips:
        return max(1, min(bound, while_trips))
    return max(1, bound)


def _constant_value(inst: _Instruction) -> int | None:
    """The integer value of a scalar constant instruction."""
    m = re.fullmatch(r"\s*(-?\d+)\s*", inst.operands[0] if inst.operands else "")
    return int(m.group(1)) if m else None


def _collective_bytes(inst: _Instruction, operand_bytes: float, output_bytes: float, n: int):
    if n <= 1:
        return 0.0
    share = (n - 1) / n
    kind = inst.opcode.removesuffix("-start")
    if kind == "all-gather":
        return share * output_bytes
    if kind == "reduce-scatter":
        return share * operand_bytes
    if kind == "all-reduce":
        return 2 * share * operand_bytes
    if kind == "all-to-all":
        return share * operand_bytes
    return operand_bytes  # collective-permute


def hlo_cost(text: str, while_trips: int | None = None, partitions: int | None = None) -> HloCost:
    """Per-chip HBM and collective bytes of the compiled module `text` (module docstring).
    `while_trips`: the trips of a loop that exits on data (the decode loop's tokens; default its
    bound). `partitions`: the group size of collectives whose replica groups are not written
    out (default: the module's num_partitions)."""
    computations, entry = parse_computations(text)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    if partitions is None:
        m = re.search(r"num_partitions=(\d+)", text)
        partitions = int(m.group(1)) if m else 1
    memo: dict[str, HloCost] = {}

    def cost_of(name: str) -> HloCost:
        if name in memo:
            return memo[name]
        memo[name] = HloCost()  # guards against a cycle while this one is summed
        types = {inst.name: inst.type_text for inst in computations.get(name, [])}
        total = HloCost()
        for inst in computations.get(name, []):
            op = inst.opcode
            if op == "while":
                conditions = _called(inst.attributes, "condition")
                n = loop_trips(inst.attributes, computations, conditions, while_trips)
                for body in _called(inst.attributes, "body"):
                    total.add(cost_of(body), n)
                for cond in conditions:
                    total.add(cost_of(cond), n + 1)
                continue
            if op == "conditional":
                branches = _called(inst.attributes, "branch_computations")
                branches += _called(inst.attributes, "true_computation")
                branches += _called(inst.attributes, "false_computation")
                costs = [cost_of(b) for b in branches]
                if costs:
                    total.add(max(costs, key=lambda c: c.hbm_bytes))
                continue
            if op in ("call", "async-start"):
                for called in _called(inst.attributes, "to_apply") + _called(
                    inst.attributes, "calls"
                ):
                    total.add(cost_of(called))
                continue
            if op in _FREE:
                continue
            operand_bytes, output_bytes = _traffic(inst, types, computations)
            total.hbm_bytes += operand_bytes + output_bytes
            if op in _COLLECTIVES:
                moved = _collective_bytes(
                    inst,
                    sum(type_bytes(types.get(o, ""), False) for o in inst.operands),
                    _result_bytes(inst),
                    group_size(inst.attributes, partitions),
                )
                kind = op.removesuffix("-start")
                total.collective_bytes += moved
                total.collectives[kind] = total.collectives.get(kind, 0.0) + moved
        memo[name] = total
        return total

    return cost_of(entry)


def _traffic(
    inst: _Instruction, types: dict[str, str], computations: dict[str, list[_Instruction]]
) -> tuple[float, float]:
    """Bytes an instruction reads and writes. A slice taken from an operand (slice,
    dynamic-slice, gather) reads the slice, not the operand: a scanned layer's weights from the
    stacked array, the embedding rows of a decode step's tokens. An update written into an
    operand in place (dynamic-update-slice) reads and writes the update: the decode's new
    KV-cache entry. So also inside a fusion, for a fused parameter used only that way."""
    operands = [type_bytes(types.get(o, "")) for o in inst.operands]
    output = type_bytes(inst.type_text)
    if inst.opcode in _SLICES and operands:
        operands[0] = output
    elif inst.opcode == "dynamic-update-slice" and len(operands) > 1:
        operands[0], output = 0.0, operands[1]
    elif inst.opcode == "fusion" and (fused := _called(inst.attributes, "calls")):
        body = computations.get(fused[0], [])
        body_types = {i.name: i.type_text for i in body}
        for index, name in _parameters(body).items():
            if index < len(operands):
                read = _read_of(name, body, computations)  # (no more than the operand's bytes,
                if read is not None:  # 0 when it lies in on-chip memory)
                    operands[index] = min(operands[index], read)
        root = next((i for i in body if i.root), None)
        if root is not None and root.opcode == "dynamic-update-slice":
            target = root.operands[0]
            if any(i.name == target and i.opcode == "parameter" for i in body):
                output = type_bytes(body_types.get(root.operands[1], ""))
    return sum(operands), output


def _parameters(body: list[_Instruction]) -> dict[int, str]:
    """A fused computation's parameters by number."""
    return {int(i.operands[0]): i.name for i in body if i.opcode == "parameter"}


def _read_of(
    name: str, body: list[_Instruction], computations: dict[str, list[_Instruction]]
) -> float | None:
    """Bytes read of fused parameter `name` when every use takes a slice of it (slice,
    dynamic-slice, gather; a nested fusion's parameter that is so used) or writes into it in place
    (dynamic-update-slice, 0 read); None when some use reads it whole."""
    uses = [i for i in body if name in i.operands]
    if not uses:
        return None
    read = 0.0
    for use in uses:
        first = use.operands[0] == name and use.operands.count(name) == 1
        if use.opcode in _SLICES and first:
            read += type_bytes(use.type_text)
        elif use.opcode == "dynamic-update-slice" and first:
            pass
        elif use.opcode == "fusion" and (nested := _called(use.attributes, "calls")):
            inner = computations.get(nested[0], [])
            params = _parameters(inner)
            positions = [k for k, o in enumerate(use.operands) if o == name]
            parts = [_read_of(params[k], inner, computations) if k in params else None
                     for k in positions]  # fmt: skip
            if any(part is None for part in parts):
                return None
            read += sum(parts)
        else:
            return None
    return read


def _result_bytes(inst: _Instruction) -> float:
    """A collective's result bytes; an asynchronous -start returns (operands, results, ...):
    its result is the tuple's second element."""
    if inst.opcode.endswith("-start") and inst.type_text.startswith("("):
        elements = _tuple_elements(inst.type_text)
        if len(elements) >= 2:
            return type_bytes(elements[1], False)
    return type_bytes(inst.type_text, False)


def _tuple_elements(type_text: str) -> list[str]:
    """The top-level elements of a tuple type `(a, (b, c), d)` -> ["a", "(b, c)", "d"]."""
    depth, parts, start = 0, [], 0
    body = type_text.strip()[1:-1]
    for i, ch in enumerate(body):
        depth += ch in "({["
        depth -= ch in ")}]"
        if ch == "," and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    parts.append(body[start:].strip())
    return [p for p in parts if p]

"""Matmul FLOPs of a compiled XLA program with every loop counted as many times as it runs.

`compiled.cost_analysis()["flops"]` counts the body of a `while` loop once, whatever its trip count: the
DiT's layer scan (30-40 iterations), the chunked attention's query/key-block loops and the gradient
accumulation loop are all under-counted, by ~100x for the paper-size step. This module reads the
optimised HLO text of the same compiled program (`compiled.as_text()`) and counts it properly:

* every `dot` costs 2 x (elements of its output) x (product of its contracting dimensions), every
  `convolution` 2 x (elements of its output) x (kernel elements per output feature / feature groups);
  these are the matmul FLOPs of the MFU convention (`train.flops`), so the two counts are comparable;
* a computation's count is the sum of its own dots and convolutions plus, for every instruction that calls
  other computations, their counts times a multiplier: a `while` body x its `known_trip_count` (which XLA
  records in the loop's backend config for every counted loop: `scan`, `fori_loop` with static bounds,
  `map`); a `conditional` the largest branch; fusions, calls, reductions and the like x 1.

A loop whose trip count XLA does not know (a `fori_loop` with traced bounds, such as the sampler's step
loop) is counted once and reported in `HloFlops.unknown_trip_loops`, so a caller can scale by the count
it knows (the planner multiplies the sampler's one-step count by the number of steps).

Elementwise work (softmax, norms, activations) is not counted, as in `train.flops`; XLA's own figure
(`cost_analysis`) includes it but under-counts loops, so neither is a superset of the other.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

# `%name = TYPE opcode(operands), attributes`; TYPE is an array type, a token or a (nested) tuple.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_ARRAY = re.compile(r"^(?P<dtype>[a-z]\w*)\[(?P<dims>[\d,]*)\]")
_COMP_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\{\s*$")
_CALLED = re.compile(
    r"\b(?P<kind>calls|to_apply|body|condition|true_computation|false_computation)=%?(?P<name>[\w.\-]+)"
)
_BRANCHES = re.compile(r"\bbranch_computations=\{(?P<names>[^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(?P<n>\d+)"')


@dataclasses.dataclass(frozen=True)
class HloFlops:
    """flops: matmul FLOPs of the whole program (per device: an SPMD program is one device's share);
    unknown_trip_loops: while loops without a known trip count (each counted once); loops: (trip count,
    matmul FLOPs of one iteration) of every counted loop, outermost first (for reports)."""

    flops: float
    unknown_trip_loops: int
    loops: tuple[tuple[int | None, float], ...]


def _split_type(rest: str) -> tuple[str, str]:
    """`rest` after '=' -> (type text, the remainder starting at the opcode)."""
    rest = rest.lstrip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail.lstrip()


def _dims(type_text: str) -> tuple[int, ...] | None:
    m = _ARRAY.match(type_text)
    if m is None:
        return None
    return tuple(int(d) for d in m.group("dims").split(",") if d)


def _operands(call_text: str) -> list[str]:
    """Operand names of `opcode(a, b), attrs` (with or without inline operand types)."""
    start = call_text.index("(")
    depth, end = 0, len(call_text)
    for i in range(start, len(call_text)):
        depth += call_text[i] in "({["
        depth -= call_text[i] in ")}]"
        if depth == 0:
            end = i
            break
    names = []
    for part in re.split(r",\s*(?![^\[\]{}()]*[\]})])", call_text[start + 1 : end]):
        part = part.strip()
        if part:
            names.append(part.split()[-1].lstrip("%"))
    return names


def _attr_dims(text: str, key: str) -> tuple[int, ...]:
    m = re.search(rf"\b{key}=\{{([\d,]*)\}}", text)
    return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _dot_flops(out: tuple[int, ...], lhs: tuple[int, ...], text: str) -> float:
    contracting = math.prod(lhs[d] for d in _attr_dims(text, "lhs_contracting_dims"))
    return 2.0 * math.prod(out) * contracting


def _conv_flops(out: tuple[int, ...], rhs: tuple[int, ...], text: str) -> float:
    # the kernel holds (spatial x input features / groups) MACs per output feature
    m = re.search(r"\bdim_labels=\w+_(\w+)->", text)
    out_features = rhs[m.group(1).index("o")] if m and "o" in m.group(1) else 1
    return 2.0 * math.prod(out) * math.prod(rhs) / max(out_features, 1)


def _parse(hlo_text: str) -> tuple[dict[str, list[tuple[str, str, str]]], str]:
    """Computations -> [(instruction name, type text, remainder)], and the entry computation's name."""
    comps: dict[str, list[tuple[str, str, str]]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        stripped = line.strip()
        if current is None:
            m = _COMP_HEADER.match(stripped)
            if m and not stripped.startswith("HloModule"):
                current = m.group("name")
                comps[current] = []
                if stripped.startswith("ENTRY"):
                    entry = current
            continue
        if stripped == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            type_text, remainder = _split_type(m.group("rest"))
            comps[current].append((m.group("name"), type_text, remainder))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def count_matmul_flops(hlo_text: str) -> HloFlops:
    """Matmul FLOPs of the optimised HLO module `hlo_text` (`compiled.as_text()`), loops x trip counts."""
    comps, entry = _parse(hlo_text)
    unknown = [0]
    loops: list[tuple[int | None, float]] = []

    @functools.cache
    def flops_of(comp: str) -> float:
        instrs = comps.get(comp, [])
        shapes = {name: _dims(t) for name, t, _ in instrs}
        total = 0.0
        for _, type_text, rest in instrs:
            opcode = rest.split("(", 1)[0].strip()
            if opcode in ("dot", "convolution"):
                out = _dims(type_text)
                ops = _operands(rest)
                inline = re.findall(r"([a-z]\w*\[[\d,]*\])(?:\{[^}]*\})?\s+%", rest.split(")", 1)[0] + ")")
                if inline and len(inline) >= 2:
                    lhs, rhs = _dims(inline[0]), _dims(inline[1])
                else:
                    lhs, rhs = shapes.get(ops[0]), shapes.get(ops[1])
                if out is not None and lhs is not None and rhs is not None:
                    total += _dot_flops(out, lhs, rest) if opcode == "dot" else _conv_flops(out, rhs, rest)
            called = {m.group("kind"): m.group("name") for m in _CALLED.finditer(rest)}
            branches = _BRANCHES.search(rest)
            if opcode == "while" and "body" in called:
                trip = _TRIP.search(rest)
                n = int(trip.group("n")) if trip else None
                body = flops_of(called["body"]) + flops_of(called.get("condition", ""))
                if n is None:
                    unknown[0] += 1
                loops.append((n, body))
                total += body * (1 if n is None else n)
            elif branches or "true_computation" in called:
                names = [b.strip().lstrip("%") for b in branches.group("names").split(",")] if branches else []
                names += [called[k] for k in ("true_computation", "false_computation") if k in called]
                total += max((flops_of(b) for b in names if b), default=0.0)
            else:
                total += sum(flops_of(c) for k, c in called.items() if k in ("calls", "to_apply"))
        return total

    flops = flops_of(entry)
    return HloFlops(flops=flops, unknown_trip_loops=unknown[0], loops=tuple(loops))

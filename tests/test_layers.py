"""Imports point downwards only: the layer table of ARCHITECTURE.md, checked on the source.

Every .py file of `trackedit_jax/` and `data_pipeline/` is parsed with `ast` and every `import` /
`from ... import` of `trackedit_jax.*` or `data_pipeline.*` is collected, including imports inside
functions (those hide circles from the interpreter, not from this test). A "unit" is a subpackage or a
top-level module of trackedit_jax (`kernels`, `viz`, ...) or `data_pipeline` as a whole.
"""

from __future__ import annotations

import ast
import pathlib
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("trackedit_jax", "data_pipeline")

# Top to bottom; a unit may import any unit of a lower layer.
LAYERS = (
    ("entry points", ("cli", "studio")),
    ("pipelines", ("train", "infer", "eval")),
    # Libraries the pipelines assemble. The utilities (media, viz, host_memory, configuration) are used by
    # pipelines and cli only; models must not read files and data_pipeline must not import models.
    ("libraries", ("models", "convert", "data_pipeline", "media", "viz", "host_memory", "configuration")),
    ("leaves", ("kernels", "diffusion", "parallel", "geometry")),
    ("package root", ("trackedit_jax",)),  # trackedit_jax/__init__.py: `__version__` only
)

# Imports between two units of one layer are allowed only here (no circle either way: see below).
SIDEWAYS_LAYERS = {"pipelines"}  # loops may reuse each other's steps (infer builds models as train does)
SIDEWAYS = {
    ("convert", "models"): "conversion fills the NNX modules' state, so it builds the models",
    ("parallel", "kernels"): "the mesh-aware attention runs the local kernels per shard; kernels know no meshes",
    ("viz", "media"): "pictures are written like videos: atomically, with ordinary file permissions",
    ("cli", "studio"): "`trackedit studio` starts the studio's server; nothing else imports the studio",
}

LAYER_OF = {unit: (rank, name) for rank, (name, units) in enumerate(LAYERS) for unit in units}


class Import(NamedTuple):
    path: str  # file, relative to the repository root
    line: int
    importer: str  # dotted module name of the file
    imported: str  # dotted module name it imports


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """`trackedit_jax.kernels.attention` -> `kernels`, `trackedit_jax` -> `trackedit_jax`,
    `data_pipeline.shards` -> `data_pipeline`."""
    parts = module.split(".")
    if parts[0] == "trackedit_jax" and len(parts) > 1:
        return parts[1]
    return parts[0]


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str, module: str, path: str, is_package: bool = False) -> list[Import]:
    """The project imports in `source` (the text of module `module`), at any depth of the syntax tree."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from trackedit_jax import viz` imports the module trackedit_jax.viz
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
            targets = list(dict.fromkeys(names))  # `from m import a, b` is one import of m
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                found.append(Import(path, node.lineno, module, target))
    return found


def project_imports() -> list[Import]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += imports_of(
                path.read_text(), module_name(path), str(path.relative_to(ROOT)), path.name == "__init__.py"
            )
    return found


def layer_violation(imp: Import) -> str | None:
    """Why `imp` breaks the layer table, or None when it is allowed."""
    src, dst = unit_of(imp.importer), unit_of(imp.imported)
    if src == dst:
        return None
    for unit in (src, dst):
        if unit not in LAYER_OF:
            return f"unit {unit!r} is in no layer: add it to LAYERS in tests/test_layers.py"
    (src_rank, src_layer), (dst_rank, dst_layer) = LAYER_OF[src], LAYER_OF[dst]
    if src_rank < dst_rank:
        return None
    if src_rank > dst_rank:
        return f"upward import: {src} (layer {src_layer!r}) -> {dst} (layer {dst_layer!r}, above it)"
    if src_layer in SIDEWAYS_LAYERS or (src, dst) in SIDEWAYS:
        return None
    return f"sideways import within layer {src_layer!r}: {src} -> {dst} (not listed in SIDEWAYS)"


def unit_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one unit in the unit import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = unit_of(imp.importer), unit_of(imp.imported)
        if src != dst:
            graph.setdefault(src, set()).add(dst)
            graph.setdefault(dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _describe(imp: Import) -> str:
    return f"{imp.path}:{imp.line} ({imp.importer}) imports {imp.imported}"


def test_every_unit_has_one_layer():
    listed = [unit for _, units in LAYERS for unit in units]
    assert len(listed) == len(set(listed)), f"a unit is listed twice in LAYERS: {listed}"
    on_disk = {unit_of(module_name(p)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    assert not on_disk - set(listed), f"units in no layer (add them to LAYERS): {sorted(on_disk - set(listed))}"
    assert not set(listed) - on_disk, f"LAYERS names units that do not exist: {sorted(set(listed) - on_disk)}"


def test_imports_point_downwards():
    problems = [f"{_describe(imp)}: {why}" for imp in project_imports() if (why := layer_violation(imp))]
    assert not problems, "imports against the layer table:\n" + "\n".join(problems)


def test_no_import_circle_between_units():
    imports = project_imports()
    problems = []
    for group in unit_cycles(imports):
        members = set(group)
        edges = [
            _describe(imp)
            for imp in imports
            if unit_of(imp.importer) in members
            and unit_of(imp.imported) in members
            and unit_of(imp.importer) != unit_of(imp.imported)
        ]
        problems.append(f"import circle between {group}:\n  " + "\n  ".join(edges))
    assert not problems, "\n".join(problems)


def test_the_checker_sees_imports_inside_functions():
    # The circle this test was written for: kernels importing parallel inside a function.
    source = "import jax\n\ndef f():\n    from trackedit_jax.parallel import context_attention\n"
    (imp,) = imports_of(source, "trackedit_jax.kernels.attention", "trackedit_jax/kernels/attention.py")
    assert (imp.line, imp.imported) == (4, "trackedit_jax.parallel.context_attention")
    assert "sideways import within layer 'leaves': kernels -> parallel" in layer_violation(imp)
    back = Import("p.py", 1, "trackedit_jax.parallel.context_attention", "trackedit_jax.kernels.attention")
    assert layer_violation(back) is None
    assert unit_cycles([imp, back]) == [["kernels", "parallel"]]
    # upward, relative and `from package import module` forms
    (up,) = imports_of("from ..models import lora\n", "trackedit_jax.geometry.edits", "g.py")
    assert up.imported == "trackedit_jax.models.lora" and "upward import: geometry" in layer_violation(up)
    (data,) = imports_of("from trackedit_jax import viz\n", "data_pipeline.loader", "d.py")
    assert data.imported == "trackedit_jax.viz" and "sideways" in layer_violation(data)


# Modules may grow past this only with a stated reason (none needs one today).
MAX_MODULE_LINES = 520
LONG_MODULES: dict[str, str] = {}


def test_modules_stay_small():
    long = {}
    for folder in ("trackedit_jax", "data_pipeline"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            n = len(path.read_text().splitlines())
            if n > MAX_MODULE_LINES and rel not in LONG_MODULES:
                long[rel] = n
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them, or say why in LONG_MODULES): {long}"

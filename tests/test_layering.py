"""The import contract between the rooms (ARCHITECTURE.md, "Layering"): checked on the source, no import runs.

- Readers (`ckptmap.trees`) never import verify or benchmarks: reading a tree must not need a model runner.
- Production code never imports `ckptmap.benchmarks`: benchmarks measure the tool, the tool does not need them.
- Rooms depend downwards only (LAYERS; any room may ask the adapter REGISTRY), the reasoned exceptions in UPWARD
  aside; every module has a room.
- A function-local import is of a heavy or optional third-party package (HEAVY), or says why it is lazy with a
  `# lazy: why` comment on its lines, or its module says so once with a `# lazy imports: why` line.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# package -> folder: one package tree, paths are import paths
PACKAGES = {"ckptmap": "ckptmap"}


@functools.lru_cache(maxsize=1)
def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        root = REPO / folder
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            # a module inside ckptmap/ that belongs to another package folder is not double-counted
            out.setdefault(name, path)
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _violations(importer_prefix: str, forbidden: tuple[str, ...], exempt: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for name, path in sorted(_modules().items()):
        if not (name == importer_prefix or name.startswith(importer_prefix + ".")):
            continue
        if any(name == e or name.startswith(e + ".") for e in exempt):
            continue
        for imp in sorted(_imports(path)):
            if any(imp == f or imp.startswith(f + ".") for f in forbidden):
                bad.append(f"{name} imports {imp}")
    return bad


def test_readers_never_import_verify_or_benchmarks():
    assert _violations("ckptmap.trees", ("ckptmap.verify", "ckptmap.benchmarks")) == []


def test_production_code_never_imports_benchmarks():
    # `ckptmap bench` is the command that runs the benchmarks: its front end is their one importer
    assert _violations("ckptmap", ("ckptmap.benchmarks",), exempt=("ckptmap.benchmarks", "ckptmap.cli.bench")) == []


# Rooms, lowest first: a module may import its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ckptmap.errors", "ckptmap.atomic", "ckptmap.storage", "ckptmap.bundled",
     "ckptmap.native"),  # plumbing every room may use (native: the compiled kernels)
    ("ckptmap.transforms",),  # the op algebra
    ("ckptmap.trees", "ckptmap.tracing", "ckptmap.mapping_record", "ckptmap.mapping", "ckptmap.runner",
     "ckptmap.orbax_io", "ckptmap.hf_model_dir"),  # the data model and its readers (REGISTRY sits here too)
    ("ckptmap.heuristics", "ckptmap.llm_hints", "ckptmap.export", "ckptmap.checkpoint_io", "ckptmap.apply",
     "ckptmap.array_copy", "ckptmap.maxtext"),  # scoring, hints, export, checkpoint formats, the MaxText worker
    ("ckptmap.solver", "ckptmap.pipeline", "ckptmap.convert", "ckptmap.export_check"),  # solve, convert
    ("ckptmap.verify",),  # the numerical proof
    ("ckptmap.frameworks", "ckptmap.code_reading"),  # adapters: bind a framework's reader, runner, tracer, export
    ("ckptmap.cli",),
    ("ckptmap.benchmarks",),
)
# The adapter registry (lookups by SPEC kind, prefix or name; frameworks/__init__ and base) sits with the data
# model: any room may ask it. The adapter modules it loads by name (importlib) sit above verify.
REGISTRY = frozenset({"ckptmap.frameworks", "ckptmap.frameworks.base"})
REGISTRY_LAYER = 2
# The upward imports allowed, each with its reason (test_production_code_never_imports_benchmarks keeps the first
# to ckptmap.cli.bench).
UPWARD = {
    ("ckptmap.cli", "ckptmap.benchmarks"): "`ckptmap bench` runs the benchmark suite",
}
# Third-party packages a function may import lazily without a comment: heavy to import or optional.
HEAVY = frozenset({"torch", "transformers", "jax", "jaxlib", "flax", "maxtext", "orbax", "keras", "keras_hub",
                   "tensorflow", "google", "matplotlib", "ray", "tensorstore", "scipy", "ortools", "absl", "yaml",
                   "ml_dtypes", "fsspec"})


def _room(name: str) -> tuple[int, str] | None:
    """(layer, room) of a module name; a name that is no module (`ckptmap.frameworks.for_kind`) is its module's."""
    modules = _modules()
    if name not in modules and name.rsplit(".", 1)[0] in modules:
        name = name.rsplit(".", 1)[0]
    if name in REGISTRY:
        return REGISTRY_LAYER, name
    best = None
    for layer, rooms in enumerate(LAYERS):
        for room in rooms:
            if (name == room or name.startswith(room + ".")) and (best is None or len(room) > len(best[1])):
                best = (layer, room)
    return best


def test_every_module_has_a_room():
    assert [n for n in sorted(_modules()) if n != "ckptmap" and _room(n) is None] == []


def test_rooms_depend_downwards_only():
    bad = []
    for name, path in sorted(_modules().items()):
        here = _room(name)
        if here is None:
            continue
        for imp in sorted(_imports(path)):
            there = _room(imp) if imp.startswith("ckptmap.") else None
            if there and there[0] > here[0] and (here[1], there[1]) not in UPWARD:
                bad.append(f"{name} ({here[1]}, layer {here[0]}) imports {imp} ({there[1]}, layer {there[0]})")
    assert bad == []


def _local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    out[sub.lineno] = sub.names[0].name
                elif isinstance(sub, ast.ImportFrom):
                    out[sub.lineno] = "." * sub.level + (sub.module or "")
    return sorted(out.items())


def _says_why(lines: list[str], lineno: int) -> bool:
    """A `# lazy:` comment on the import's line or on the lines above it, up to the first blank line."""
    i = lineno - 1
    while i >= 0 and lines[i].strip():
        if "# lazy:" in lines[i]:
            return True
        i -= 1
    return False


# Modules whose function-local imports are still to be audited: they were being written by others while issue 12's
# audit ran. Remove a line once its module passes.
PENDING_AUDIT = frozenset({"ckptmap/verify/hf_runner.py"})


def test_function_local_imports_are_heavy_or_say_why():
    bad = []
    for name, path in sorted(_modules().items()):
        if str(path.relative_to(REPO)) in PENDING_AUDIT:
            continue
        lines = path.read_text().splitlines()
        if any(line.startswith("# lazy imports:") for line in lines):
            continue
        for lineno, module in _local_imports(path):
            if module.split(".")[0] not in HEAVY and not _says_why(lines, lineno):
                bad.append(f"{path.relative_to(REPO)}:{lineno} imports {module} inside a function")
    assert bad == []


def test_the_contract_sees_the_modules():
    names = _modules()
    assert "ckptmap.trees.hf" in names and "ckptmap.verify.hf_runner" in names and "ckptmap.solver.cpsat" in names

"""The import contract between the rooms (ARCHITECTURE.md, "Layering"): checked on the source, no import runs.

- Readers (`ckptmap.trees`) never import verify or benchmarks: reading a tree must not need a model runner.
- Production code never imports `ckptmap.benchmarks`: benchmarks measure the tool, the tool does not need them.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# package -> folder (pyproject.toml's package-dir)
PACKAGES = {"ckptmap": "ckptmap", "ckptmap.transforms": "transforms", "ckptmap.heuristics": "heuristics",
            "ckptmap.solver": "solver", "ckptmap.verify": "verify", "ckptmap.llm_hints": "llm_hints",
            "ckptmap.benchmarks": "benchmarks"}


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


def test_the_contract_sees_the_modules():
    names = _modules()
    assert "ckptmap.trees.hf" in names and "ckptmap.verify.hf_runner" in names and "ckptmap.solver.cpsat" in names

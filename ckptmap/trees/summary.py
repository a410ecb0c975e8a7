"""A compact view of a ParamTree: one row per name template and (shape, dtype), with index ranges.

80 copies of one layer tensor become a single row `model.layers.{i}.mlp.up_proj.weight  [14336, 4096]  layers
0-79 (x80)`; a template whose copies differ in shape (a model's global-attention layers) gets one row per shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptmap.trees.model import ParamTree


@dataclass(frozen=True)
class TemplateRow:
    """One row: a template, the shape/dtype its members share, how many there are and which indices they use."""

    template: str
    shape: tuple[int, ...]
    dtype: str
    count: int
    indices: tuple[tuple[str, tuple[int, ...]], ...]  # (collection, sorted distinct values) per index position
    tags: tuple[str, ...]
    stacked: tuple[tuple[int, str], ...]


def compact_ranges(values: tuple[int, ...] | list[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2,4,6-7'."""
    vals = sorted(set(values))
    if not vals:
        return ""
    parts = []
    start = prev = vals[0]
    for v in vals[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


def template_rows(tree: ParamTree) -> list[TemplateRow]:
    """Rows in order of each template's first appearance, a template's shape variants together; members of a
    row share template, shape and dtype."""
    by_template: dict[str, dict[tuple, list]] = {}
    for p in tree:
        by_template.setdefault(p.parsed.template, {}).setdefault((p.shape, p.dtype), []).append(p)
    rows = []
    for template, variants in by_template.items():
        for (shape, dtype), members in variants.items():
            rows.append(_row(template, shape, dtype, members))
    return rows


def _row(template: str, shape: tuple[int, ...], dtype: str, members: list) -> TemplateRow:
    per_position = []
    for pos, it in enumerate(members[0].parsed.indices):
        values = tuple(sorted({m.parsed.indices[pos].index for m in members if len(m.parsed.indices) > pos}))
        per_position.append((it.collection, values))
    tags = tuple(sorted({t for m in members for t in m.tags}))
    return TemplateRow(template, shape, dtype, len(members), tuple(per_position), tags, members[0].stacked_axes)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _index_text(row: TemplateRow) -> str:
    if row.count == 1 and not row.indices:
        return ""
    spans = " ".join(f"{coll or 'index'} {compact_ranges(vals)}" for coll, vals in row.indices)
    return f"{spans} (x{row.count})" if spans else f"(x{row.count})"


def format_summary(tree: ParamTree) -> str:
    """The `ckptmap trees` printout: header counts, dims and notes, then the template rows."""
    lines = [f"{tree.origin}  [{tree.framework}"
             + (f", {tree.meta['hf']['class']}" if isinstance(tree.meta.get("hf"), dict) else "") + "]",
             f"{len(tree)} tensors, {tree.total_params:,} parameters ({human_count(tree.total_params)}), "
             f"{tree.total_bytes:,} bytes ({human_bytes(tree.total_bytes)})"]
    dims = tree.meta.get("dims")
    if dims:
        lines.append("dims: " + " ".join(f"{k}={v}" for k, v in dims.items()))
    for name, target in (tree.meta.get("tied") or {}).items():
        lines.append(f"tied: {name} -> {target} (not saved)")
    buffers = tree.meta.get("buffers") or {}
    if buffers:
        shown = ", ".join(list(buffers)[:3]) + (", ..." if len(buffers) > 3 else "")
        lines.append(f"non-persistent buffers (not saved): {len(buffers)}: {shown}")
    for note in tree.meta.get("notes") or []:
        lines.append(f"note: {note}")
    rows = template_rows(tree)
    if not rows:
        return "\n".join(lines)
    width = min(max(len(r.template) for r in rows), 90)
    shape_width = max(len(str(list(r.shape))) for r in rows)
    lines.append("")
    for r in rows:
        extra = [_index_text(r)]
        if r.stacked:
            extra.append("stacked " + ",".join(f"axis{a}={w}" for a, w in r.stacked))
        if r.tags:
            extra.append("[" + ",".join(r.tags) + "]")
        tail = "  ".join(e for e in extra if e)
        lines.append(f"  {r.template:<{width}}  {str(list(r.shape)):<{shape_width}}  {r.dtype:<9} {tail}".rstrip())
    return "\n".join(lines)

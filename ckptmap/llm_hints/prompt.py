"""The question put to the LLM: both trees as deduplicated templates, the config numbers, and the answer schema.

The prompt is a pure function of the two trees' templates, shapes, index ranges and dims, so the same pair
always gives the same text (and the same cache key). Origins, paths and dtypes are left out on purpose: they
would change the key without changing the answer.
"""

from __future__ import annotations

from ckptmap.transforms.value_kinds import VALUE_KINDS
from ckptmap.trees.model import ParamTree
from ckptmap.llm_hints.templates import TemplateGroup, compact_ranges, group_templates

PROMPT_VERSION = 1

# Value ops: changes of values that no shape can reveal, registered once in transforms.value_kinds (name -> the
# text the prompt shows). verify orders its search by these kinds.
OP_KINDS: dict[str, str] = {k.name: k.description for k in VALUE_KINDS.values()}

CANONICAL_DIMS = ("hidden", "heads", "kv_heads", "head_dim", "mlp", "moe_mlp", "layers", "experts", "vocab")

RESPONSE_SCHEMA: dict = {
    "type": "OBJECT",
    "properties": {
        "correspondences": {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "source": {"type": "STRING"},
                    "target": {"type": "STRING"},
                    "confidence": {"type": "NUMBER"},
                    "why": {"type": "STRING"},
                },
                "required": ["source", "target", "confidence"],
            },
        },
        "value_ops": {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {
                    "target": {"type": "STRING"},
                    "op": {"type": "STRING", "enum": list(OP_KINDS)},
                    "confidence": {"type": "NUMBER"},
                    "why": {"type": "STRING"},
                },
                "required": ["target", "op", "confidence"],
            },
        },
    },
    "required": ["correspondences", "value_ops"],
}


def merged_dims(src: ParamTree, tgt: ParamTree, dims: dict | None = None) -> dict[str, int]:
    """Integer config numbers of both trees' `meta["dims"]`; `dims` wins, then the target, then the source."""
    out: dict[str, int] = {}
    for d in (src.meta.get("dims") or {}, tgt.meta.get("dims") or {}, dims or {}):
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int):
                continue
            out[str(k)] = v
    return out


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def describe_group(group: TemplateGroup) -> str:
    """One line per template: `name  [4096, 4096]  x32  layers 0-31`."""
    if len(group.shapes) == 1:
        shapes = _shape_text(group.shapes[0][0])
    else:
        shapes = " or ".join(f"{_shape_text(s)} (x{n})" for s, n in group.shapes)
    parts = [group.template, shapes]
    if group.count > 1:
        parts.append(f"x{group.count}")
    ranges = [f"{name} {compact_ranges(vals)}" for name, vals in zip(group.index_names, group.indices)]
    if ranges:
        parts.append(", ".join(ranges))
    if group.stacked:
        parts.append("stacked: " + ", ".join(f"axis {a} = {what}" for a, what in group.stacked))
    return "  ".join(parts)


def dims_text(dims: dict[str, int]) -> str:
    order = [k for k in CANONICAL_DIMS if k in dims] + sorted(k for k in dims if k not in CANONICAL_DIMS)
    return ", ".join(f"{k}={dims[k]}" for k in order) if order else "(none given)"


def build_prompt(src: ParamTree, tgt: ParamTree, dims: dict | None = None) -> str:
    """The full question for the pair src -> tgt. `{i}` in a template stands for a layer or expert index."""
    src_lines = "\n".join(describe_group(g) for g in group_templates(src))
    tgt_lines = "\n".join(describe_group(g) for g in group_templates(tgt))
    op_lines = "\n".join(f"- {k}: {v}" for k, v in OP_KINDS.items())
    return f"""\
Two checkpoints hold the same transformer language model, saved by two different frameworks. Map the SOURCE \
parameters onto the TARGET parameters.

Each line is one parameter template: `{{i}}` stands for a layer or expert index, followed by the shape, the \
number of copies and the index ranges. A target may be built from several sources (q, k and v fused into one \
tensor; per-layer tensors stacked along one axis; per-expert tensors stacked), and a source may feed several \
targets (a fused tensor split; tied embeddings). Transposes, reshapes, splits, concatenations and stacking are \
found separately; do not describe them.

Config: {dims_text(merged_dims(src, tgt, dims))}

SOURCE templates:
{src_lines}

TARGET templates:
{tgt_lines}

Answer in JSON:
- "correspondences": for every target template, the source template(s) that hold its values, each with a \
confidence between 0 and 1. Write templates exactly as listed above.
- "value_ops": target templates whose values change beyond layout, with the kind of change and a confidence \
between 0 and 1. Kinds:
{op_lines}
List a value op only when the naming conventions of these frameworks make it likely; omit the rest.
"""

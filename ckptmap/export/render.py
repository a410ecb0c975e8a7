"""Render: the exported module's text (PARAM_MAPPING / HOOK_FNS functions, loops, emitted helpers)."""

from __future__ import annotations

import json
import re
import runpy
import textwrap
from dataclasses import dataclass, field
from typing import Any, Sequence

from ckptmap.export.templates import (EXPERT, LAYER, Field, Template, claim_unit_dims, config_ints,
                                      count_expression, fields_of, offset_expression, render_template,
                                      sequence_expression, varying_kinds, word_kind)
from ckptmap.export import emitted
from ckptmap.export.blocks import Block, build_blocks
from ckptmap.export.hooks import HookSet, rename_ids
from ckptmap.export.plan import ExportError, hf_to_maxtext, is_scanned, lift_stacked_sources, plan_rule
from ckptmap.mapping import Mapping, write_text_atomic


# ------------------------------------------------------------------------------------------------ rendering

@dataclass
class Naming:
    """Loop variable names and loop lengths as source text, shared across one exported branch."""

    ints: dict[str, int]
    known_offsets: dict[int, str] = field(default_factory=dict)

    config: dict = field(default_factory=dict)

    def count(self, value: int, kind: str | None, *, compound: bool = True) -> str:
        expr = count_expression(value, kind, self.ints, compound=compound) if self.ints else None
        if expr is None:
            return str(value)
        if kind == LAYER:
            self.known_offsets.setdefault(value, expr)
        return expr

    def iterable(self, values: list[int], kind: str | None, *, compound: bool = True) -> str:
        """`range(<count>)` for 0..n-1, else the index sequence (from a per-layer config list, or literally)."""
        if values == list(range(len(values))):
            return f"range({self.count(len(values), kind, compound=compound)})"
        if values == list(range(values[0], values[-1] + 1)):
            return f"range({values[0]}, {values[-1] + 1})"
        return sequence_expression(values, self.config) or repr(tuple(values))


def _rename(template: Template, names: dict[str, str], naming: Naming, kinds: dict[str, str]) -> Template:
    out = []
    for p in template:
        if isinstance(p, Field):
            coeffs = tuple((names[v], c) for v, c in p.coeffs)
            layer_coeff = any(kinds.get(v) == LAYER for v, _ in p.coeffs)
            off = naming.ints and layer_coeff and offset_expression(p.offset, LAYER, naming.ints,
                                                                    naming.known_offsets) or None
            p = Field(offset=p.offset, coeffs=coeffs, word=p.word, offset_expr=off)
        out.append(p)
    return tuple(out)


def _value_source(block: Block, names: dict[str, str], iterables: dict[str, str], hf: list[Template]) -> str:
    leaves = [render_template(t) for t in hf]
    leaf = leaves[0] if len(leaves) == 1 else "(" + ", ".join(leaves) + ")"
    if block.plans[0].whole:
        loops = " ".join(f"for {names[v]} in {iterables[v]}" for v, _ in block.stack_vars)
        if len(leaves) == 1:
            return f"tuple({leaf} {loops})" if loops else f"({leaf},)"
        return f"tuple(name {loops} for name in {leaf})" if loops else leaf
    expr = leaf
    for v, _ in reversed(block.stack_vars):
        expr = f"[{expr} for {names[v]} in {iterables[v]}]"
    return expr


@dataclass
class RenderedBlock:
    head: list[str]  # loop headers (without indentation), outermost first
    mapping: list[str]  # body statements (without indentation)
    hooks: list[str]
    comment: str = ""


def _implicit_layer(block: Block) -> int | None:
    """The layer index of a rule without a grid whose every name carries one (`dense_layers_0` from
    `model.layers.0`), else None: such a rule is one layer of a run whose length the config gives."""
    firsts = []
    for t in block.mt_templates + block.hf_templates:
        hits = [f for f in fields_of(t) if not f.coeffs and word_kind(f.word) == LAYER]
        if not hits:
            return None
        firsts.append(hits[0].offset)
    return firsts[0] if firsts[0] == 0 else None


def render_block(block: Block, naming: Naming) -> RenderedBlock:
    """Loop headers and the PARAM_MAPPING / HOOK_FN statements of one block (unindented)."""
    if not block.loop_vars and not block.stack_vars:
        layer = _implicit_layer(block)
        if layer is not None:  # one tensor of an indexed layer (the only dense layer): still a loop over layers
            block.loop_vars = [("u", [layer])]
    all_vars = block.loop_vars + block.stack_vars
    kinds = varying_kinds(block.hf_templates + block.mt_templates)
    unit = [(v, vals[0]) for v, vals in all_vars if len(vals) == 1 and v not in kinds]
    if unit:
        templates = claim_unit_dims(block.hf_templates + block.mt_templates, unit, kinds)
        block.hf_templates = templates[:len(block.hf_templates)]
        block.mt_templates = templates[len(block.hf_templates):]
    names: dict[str, str] = {}
    used: set[str] = set()
    for v, _ in all_vars:
        base = "k" if v == "g" else {LAYER: "i", EXPERT: "e"}.get(kinds.get(v, ""), "j")
        name, n = base, 2
        while name in used:
            name, n = f"{base}{n}", n + 1
        names[v] = name
        used.add(name)
    # a loop over grouped rules runs over the members of a repeating block (layers_0, layers_1 of a scanned
    # pair): its length is a config key only when one names it, never a coincidental ratio of two
    iterables = {v: naming.iterable(vals, kinds.get(v), compound=(v != "g")) for v, vals in all_vars}
    mt = [_rename(t, names, naming, kinds) for t in block.mt_templates]
    hf = [_rename(t, names, naming, kinds) for t in block.hf_templates]
    head = [f"for {names[v]} in {iterables[v]}:" for v, _ in block.loop_vars]
    value = _value_source(block, names, iterables, hf)
    keys = [render_template(t) for t in mt]
    if len(keys) == 1:
        body = [f"mapping[{keys[0]}] = {value}"]
    else:
        body = [f"value = {value}"] + [f"mapping[{k}] = value" for k in keys]
    load, save = block.load_hooks, block.save_hook
    hook_lines: list[str] = []
    if any(h is not None for h in load) or save is not None:
        if len(keys) == 1:
            hook_lines.append(f"hooks[{keys[0]}] = {save}" if load[0] == save
                              else f"hooks[{keys[0]}] = hook({load[0]}, {save})")
        else:
            hook_lines += ["if saving_to_hf:", f"    hooks[({', '.join(keys)})] = {save}", "else:"]
            hook_lines += [f"    hooks[{k}] = {h}" for k, h in zip(keys, load)]
    return RenderedBlock(head, body, hook_lines, block.comment)


def _top_level(text: str):
    """Yield the index of every character outside brackets and string literals."""
    depth, quote = 0, ""
    for k, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            yield k


def _last_top_level_for(text: str) -> int:
    """Index of the last ` for ` outside any bracket, or -1."""
    return max((k for k in _top_level(text) if text.startswith(" for ", k)), default=-1)


def _wrap(line: str, limit: int = 118) -> list[str]:
    """Break an over-long assignment after its `=`, and a long comprehension before its last `for`."""
    if len(line) <= limit or " = " not in line:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    head, rest = line.split(" = ", 1)
    if rest.startswith("[") and rest.endswith("]"):
        opener, inner, closer = "[", rest[1:-1], "]"
    elif rest.startswith("tuple(") and rest.endswith(")"):
        opener, inner, closer = "tuple(", rest[6:-1], ")"
    elif rest.startswith("hook(") and rest.endswith(")"):
        opener, inner, closer = "hook(", rest[5:-1], ")"
    else:
        opener, inner, closer = "(", rest, ")"
    body = [inner]
    cut = _last_top_level_for(inner)
    if len(indent) + 4 + len(inner) > limit and cut > 0:
        body = [inner[:cut], inner[cut + 1:]]
    return [f"{head} = {opener}"] + [f"{indent}    {b}" for b in body] + [f"{indent}{closer}"]


def _wrap_tuple_key(line: str, limit: int = 118) -> list[str] | None:
    m = re.match(r"^(\s*)hooks\[\((.*)\)\] = (.*)$", line)
    if not m or len(line) <= limit:
        return None
    indent, keys, rhs = m.groups()
    parts, start = [], 0
    for k in _top_level(keys):
        if keys[k] == ",":
            parts.append(keys[start:k].strip())
            start = k + 1
    parts.append(keys[start:].strip())
    return [f"{indent}hooks[("] + [f"{indent}    {p}," for p in parts if p] + [f"{indent})] = {rhs}"]


def _emit(blocks: list[RenderedBlock], part: str, indent: str, rename=lambda line: line) -> list[str]:
    """Statements of consecutive blocks that share their loop headers go under one loop nest."""
    out: list[str] = []
    previous_head: list[str] | None = None
    for b in blocks:
        lines = getattr(b, part)
        if not lines:
            continue
        pad = indent + "    " * len(b.head)
        if b.head != previous_head or not b.head or (b.comment and part == "mapping"):
            if b.comment and part == "mapping":
                out += [f"{indent}# {c}" for c in textwrap.wrap(b.comment, 116 - len(indent))]
            out += [f"{indent}{'    ' * k}{h}" for k, h in enumerate(b.head)]
        for line in lines:
            line = rename(pad + line)
            out += _wrap_tuple_key(line) or _wrap(line)
        previous_head = b.head
    return out


def model_prefix(model_name: str) -> str:
    """`llama3.1-8b` -> `LLAMA3_1_8B`."""
    prefix = re.sub(r"[^0-9A-Za-z]+", "_", model_name).strip("_").upper()
    return prefix if prefix and not prefix[0].isdigit() else "M_" + prefix


def render_module(branches: dict[bool, list[Block]], hooks: HookSet, model_name: str, config: dict,
                  provenance: list[str], scan_axis: int) -> str:
    ints = config_ints(config)
    prefix = model_prefix(model_name)
    map_fn, hook_fn = f"{prefix}_MAXTEXT_TO_HF_PARAM_MAPPING", f"{prefix}_MAXTEXT_TO_HF_PARAM_HOOK_FN"
    names = hooks.final_names()
    map_body: dict[bool, list[str]] = {}
    hook_body: dict[bool, list[str]] = {}
    indent = "        " if len(branches) > 1 else "    "
    for scanned, blocks in branches.items():
        naming = Naming(ints, config=config)
        rendered = [render_block(b, naming) for b in blocks]
        map_body[scanned] = _emit(rendered, "mapping", indent)
        hook_body[scanned] = _emit(rendered, "hooks", indent, lambda line: rename_ids(line, names))

    def branch_code(bodies: dict[bool, list[str]]) -> list[str]:
        if len(bodies) == 1:
            only = next(iter(bodies))
            return [f"    if {'not ' if only else ''}scan_layers:",
                    f"        raise ValueError(\"exported from a scan_layers={only} tree only; export the "
                    f"scan_layers={not only} mapping too\")", *bodies[only]]
        return ["    if scan_layers:", *(bodies[True] or ["        pass"]),
                "    else:", *(bodies[False] or ["        pass"])]

    scan_check = []
    if True in branches:
        scan_check = [f"    if scan_layers and getattr(maxtext_config, \"param_scan_axis\", {scan_axis}) != "
                      f"{scan_axis}:",
                      f"        raise ValueError(\"exported for param_scan_axis={scan_axis}\")"]
    out = [f'"""MaxText <-> HF parameter names and hooks for {model_name}, in the form of MaxText\'s',
           "checkpoint_conversion/utils/param_mapping.py. Written by `ckptmap` from solved mappings; regenerate",
           "rather than edit. Exported from:"]
    out += [f"  {p}" for p in provenance]
    out += ["",
            f"{map_fn}(config, maxtext_config, scan_layers=False):",
            "    MaxText name -> HF name(s).",
            f"{hook_fn}(config, maxtext_config, scan_layers=False, saving_to_hf=False):",
            "    MaxText name -> hook(tensor, target_shape), applied per slice: HF -> MaxText, or MaxText -> HF",
            "    when saving_to_hf.",
            "`config` is the HF config as a dict.",
            '"""', ""]
    hook_sources = hooks.sources(names)
    if hooks.helpers:
        out += ["import itertools", ""]
    if any(re.search(r"bfloat16|float8", src) for src in hook_sources):
        out += ["import ml_dtypes  # noqa: F401 (lets numpy read the dtype names 'bfloat16', 'float8_*')"]
    out += ["import numpy as np", "", ""]
    if hooks.helpers:
        for h in emitted.COMMON + tuple(sorted(hooks.helpers)):
            out += [emitted.source(h), "", ""]
    for src in hook_sources:
        out += [src, "", ""]
    out += [f"def {map_fn}(config, maxtext_config, scan_layers=False):",
            f'    """MaxText parameter name -> HF parameter name(s) for {model_name}."""',
            *scan_check,
            "    mapping = {}",
            *branch_code(map_body),
            "    return mapping", "", "",
            f"def {hook_fn}(config, maxtext_config, scan_layers=False, saving_to_hf=False):",
            f'    """MaxText parameter name -> hook for {model_name}: HF -> MaxText, or MaxText -> HF when',
            '    saving_to_hf."""',
            "",
            "    def hook(to_maxtext, to_hf):",
            '        """The hook for this direction (None: the tensor passes unchanged)."""',
            "        return to_hf if saving_to_hf else to_maxtext",
            "",
            "    hooks = {}",
            *branch_code(hook_body),
            "    return hooks", "", "",
            f"PARAM_MAPPING = {{{json_str(model_name)}: {map_fn}}}",
            f"HOOK_FNS = {{{json_str(model_name)}: {hook_fn}}}", ""]
    return "\n".join(out)


def json_str(text: str) -> str:
    return json.dumps(text)


# ------------------------------------------------------------------------------------------------ entry point

def export_maxtext_module(mapping: Mapping | Sequence[Mapping], path: str | None, model_name: str, *,
                          hf_config: dict | None = None,
                          target_shapes: dict[str, Sequence[int]] | None = None) -> str:
    """Write (and return) a Python module in MaxText's param_mapping form for `mapping`.

    `mapping`: one Mapping, or one per scan setting (scanned and unscanned MaxText trees); either direction
    (HF -> MaxText or MaxText -> HF). `model_name`: MaxText's model name (`llama3.1-8b`), the function prefix.
    `hf_config`: the HF config dict the functions will receive, used to spell loop lengths as config keys (without
    it they are numbers). `target_shapes`: MaxText name -> shape, which decides a few stacking cases (per-layer
    scalars); without it those rules are written in the always-valid tuple form. `path=None` only returns the text.
    Raises ExportError (a CkptmapError) for a rule MaxText's form cannot express.
    """
    mappings = [mapping] if isinstance(mapping, Mapping) else list(mapping)
    if not mappings:
        raise ExportError("nothing to export: no mapping given")
    shapes = {k: tuple(v) for k, v in (target_shapes or {}).items()}
    hooks = HookSet()
    branches: dict[bool, list[Block]] = {}
    provenance = []
    scan_axis = 1
    for m in mappings:
        m = hf_to_maxtext(m)
        scanned = is_scanned(m)
        if scanned in branches:
            raise ExportError(f"two mappings for scan_layers={scanned}; give at most one scanned and one unscanned")
        scan_axis = int(m.meta.get("param_scan_axis", 1))
        # a target filled with a constant (no HF tensor) is left to MaxText's own init: no PARAM_MAPPING entry
        plans = [plan_rule(lift_stacked_sources(r), i, scanned=scanned, scan_axis=scan_axis, target_shapes=shapes)
                 for i, r in enumerate(m.rules) if r.sources]
        branches[scanned] = build_blocks(plans, hooks)
        provenance.append(f"{m.source or 'HF'} -> {m.target or 'MaxText'}, scan_layers={scanned}")
    text = render_module(dict(sorted(branches.items(), reverse=True)), hooks, model_name, hf_config or {},
                         provenance, scan_axis)
    compile(text, path or "<export>", "exec")
    if path is not None:
        write_text_atomic(path, text)
    return text


def load_exported(path: str) -> dict[str, Any]:
    """Import an exported module from its file (tests, users): its namespace."""
    return runpy.run_path(path)


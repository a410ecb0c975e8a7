"""The repeated structure of a parameter tree: stacks of layers, their slots, and per-cell units.

A *unit* is one operand the solver can match: a whole tensor, or one cell of a tensor whose layer axes are
stacked (MaxText's scanned `params-decoder-layers-mlp-wi_0-kernel` [E, L, F] gives L units of shape [E, F]).
Each unit has a *coordinate*: the stack levels it sits in (`(("layers", 3),)`, or for a nested scan
`(("scanned_blocks", 1), ("local_layers", 4))`), a *root* (the name before the first level) and a *local*
name (after the last level; an expert index becomes `{e}`). Units with the same root and coordinate form a
*slot*: one layer instance. Units with no coordinate are globals.

Which indexed tokens are layer levels and which unindexed tokens are scanned axes is read off the tree
itself (an index that takes several values, or a plural `*layers`/`*blocks` word; a scan word whose
params all share an axis of one size), never from a model table.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from ckptmap.transforms.base import numel

from ckptmap.trees.model import EXPERT_WORDS, LAYER_WORDS, ParamTree, name_separators, name_tokens

_SCAN_WORD = re.compile(r"(layers?|blocks?)$", re.IGNORECASE)
_PLURAL_LEVEL = re.compile(r"(layers|blocks|^h)$", re.IGNORECASE)


def _is_layer_word(base: str) -> bool:
    low = base.lower()
    return bool(_SCAN_WORD.search(low)) and "norm" not in low


def _is_expert_word(base: str) -> bool:
    low = base.lower()
    return low in EXPERT_WORDS or low.endswith("experts") or low == "expert"


@dataclass(frozen=True)
class Unit:
    """One matchable operand: tensor `tensor`, at `inner` along its stacked axes `stacked_axes` (or whole).

    `shape` is the cell's shape (stacked axes removed). `expert` is set for per-expert tensors.
    """

    tensor: str
    shape: tuple[int, ...]
    root: str
    coord: tuple[tuple[str, int], ...]
    local: str
    inner: tuple[int, ...] = ()
    stacked_axes: tuple[int, ...] = ()
    expert: int | None = None

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass
class Slot:
    """One layer instance (or the globals of a tree when coord is ())."""

    root: str
    coord: tuple[tuple[str, int], ...]
    units: list[Unit] = field(default_factory=list)
    _signature: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.coord)

    def locals(self) -> frozenset[str]:
        return frozenset(u.local for u in self.units)

    def signature(self) -> tuple[int, ...]:
        """Sorted element counts of its local params (expert copies summed): compares layers across frameworks."""
        if self._signature is None or self._signature[0] != len(self.units):
            sums: dict[str, int] = defaultdict(int)
            for u in self.units:
                sums[u.local] += u.numel
            self._signature = (len(self.units), tuple(sorted(sums.values())))
        return self._signature[1]


@dataclass
class TreeStructure:
    tree: ParamTree
    slots: dict[tuple[str, tuple], Slot]
    globals: list[Unit]

    def roots(self) -> dict[str, list[Slot]]:
        out: dict[str, list[Slot]] = defaultdict(list)
        for s in self.slots.values():
            out[s.root].append(s)
        return out


def _join(tokens: list[str], seps: list[str]) -> str:
    if not tokens:
        return ""
    out = tokens[0]
    for sep, tok in zip(seps, tokens[1:]):
        out += sep + tok
    return out


@dataclass
class _Parsed:
    name: str
    tokens: list[str]
    seps: list[str]
    bases: list[str]
    index: list[int | None]


def _parse(name: str) -> _Parsed:
    tokens = name_tokens(name)
    seps = name_separators(name)
    bases: list[str] = []
    index: list[int | None] = []
    for pos, tok in enumerate(tokens):
        if tok.isdigit():
            # `layers.3`: the index belongs to the previous token; mark this token as its index.
            bases.append("")
            index.append(int(tok))
            continue
        m = re.match(r"^(?P<base>[A-Za-z][A-Za-z0-9_]*?)_(?P<idx>\d+)$", tok)
        if m and not tok.lower().startswith(("wi_", "w_")):
            bases.append(m.group("base"))
            index.append(int(m.group("idx")))
        else:
            bases.append(tok)
            index.append(None)
    return _Parsed(name, tokens, seps, bases, index)


def _site(p: _Parsed, pos: int) -> str:
    """A key for one indexed position, with earlier indices wildcarded."""
    parts = []
    for i in range(pos + 1):
        if p.index[i] is not None and i < pos:
            parts.append((p.bases[i] or "#") + "_*")
        else:
            parts.append(p.bases[i] or "#")
    return "/".join(parts)


def analyse(tree: ParamTree) -> TreeStructure:
    """Find stacks, slots and units of `tree` from its names and shapes alone."""
    parsed = {p.name: _parse(p.name) for p in tree}

    # 1. Indexed positions: which are layer levels, which expert indices, which plain names (LayerNorm_0).
    site_values: dict[str, set[int]] = defaultdict(set)
    for p in parsed.values():
        for pos, idx in enumerate(p.index):
            if idx is not None:
                site_values[_site(p, pos)].add(idx)

    def kind_at(p: _Parsed, pos: int) -> str | None:
        idx = p.index[pos]
        if idx is None:
            return None
        base = p.bases[pos] if p.bases[pos] else (p.bases[pos - 1] if pos > 0 else "")
        if _is_expert_word(base):
            return "expert"
        several = len(site_values[_site(p, pos)]) > 1
        layerish = _is_layer_word(base) or base.lower() in LAYER_WORDS
        if layerish and (several or _PLURAL_LEVEL.search(base.lower())):
            return "layer"
        return None

    # 2. Scanned (unindexed) layer words: group params by the prefix up to their last scan candidate.
    scan_cands: dict[str, list[int]] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, p in parsed.items():
        cands = [pos for pos in range(len(p.tokens) - 1)
                 if p.index[pos] is None and p.bases[pos] and _is_layer_word(p.bases[pos])
                 and not (pos + 1 < len(p.tokens) and p.tokens[pos + 1].isdigit())]
        if cands:
            scan_cands[name] = cands
            prefix = _join(p.tokens[:cands[-1] + 1], p.seps[:cands[-1]])
            groups[prefix].append(name)
    scanned: dict[str, tuple[list[int], tuple[int, ...], tuple[int, ...]]] = {}
    for prefix, names in groups.items():
        cands = scan_cands[names[0]]
        found = None
        for k in range(len(cands), 0, -1):
            for a in (1, 0, 2, 3):
                sizes = None
                ok = True
                for n in names:
                    shp = tree[n].shape
                    if len(shp) < a + k:
                        ok = False
                        break
                    s = tuple(shp[a:a + k])
                    if sizes is None:
                        sizes = s
                    elif s != sizes:
                        ok = False
                        break
                if ok and sizes is not None and len(names) > 1:
                    found = (cands[:k], tuple(range(a, a + k)), sizes)
                    break
            if found:
                break
        if found:
            for n in names:
                scanned[n] = found
        else:
            scanned.update(_per_name_scan(tree, names, cands))
    _agree_across_collections(tree, groups, scan_cands, scanned)
    # A reader that knows the stacked layer axes (MaxText's logical axis names) is believed over inference.
    for name, cands in scan_cands.items():
        layer_axes = tuple(a for a, what in tree[name].stacked_axes if what == "layers")
        if layer_axes and len(cands) >= len(layer_axes) and name not in scanned:
            shape = tree[name].shape
            scanned[name] = (cands[:len(layer_axes)], layer_axes, tuple(shape[a] for a in layer_axes))

    # 3. Units. Names whose first token is a variable collection (flax's `params-decoder-...` beside
    # `MoEBiasVar-decoder-...`) share their layer instances across collections: the collection is left out of
    # the root when one second token sits under several first tokens.
    firsts: dict[str, set[str]] = defaultdict(set)
    for p in parsed.values():
        if len(p.tokens) > 2:
            firsts[p.tokens[1]].add(p.tokens[0])
    collection_named = {n for n, p in parsed.items() if len(p.tokens) > 2 and len(firsts[p.tokens[1]]) > 1}
    slots: dict[tuple[str, tuple], Slot] = {}
    globals_: list[Unit] = []
    for info in tree:
        p = parsed[info.name]
        scan = scanned.get(info.name)
        scan_pos, scan_axes, scan_sizes = scan if scan else ([], (), ())
        level_pos = [pos for pos in range(len(p.tokens)) if kind_at(p, pos) == "layer"]
        level_pos = sorted(set(level_pos) | set(scan_pos))
        expert_pos = [pos for pos in range(len(p.tokens)) if kind_at(p, pos) == "expert"]
        # Build root / local strings.
        first = level_pos[0] if level_pos else None
        last = level_pos[-1] if level_pos else None

        def tok_for_root(pos: int) -> str:
            return p.tokens[pos]

        if first is None:
            root = ""
            local_start = 0
        else:
            # `layers.3`: the level word is the token before the digit.
            root_end = first - 1 if p.tokens[first].isdigit() else first
            start = 1 if info.name in collection_named and root_end > 1 else 0
            root = _join(p.tokens[start:max(root_end, 0)], p.seps[start:max(root_end - 1, 0)])
            local_start = last + 1
        local_tokens = []
        for pos in range(local_start, len(p.tokens)):
            if pos in expert_pos:
                local_tokens.append("{e}" if p.tokens[pos].isdigit() else f"{p.bases[pos]}_{{e}}")
            else:
                local_tokens.append(p.tokens[pos])
        local = _join(local_tokens, p.seps[local_start:]) if local_tokens else ""
        expert = p.index[expert_pos[-1]] if expert_pos else None

        def level_name(pos: int) -> str:
            if p.tokens[pos].isdigit():
                return p.bases[pos - 1] if pos > 0 else "#"
            return p.bases[pos]

        static_levels = [(pos, level_name(pos), p.index[pos]) for pos in level_pos if pos not in scan_pos]
        # Drop level words that are immediately followed by a digit token (they are the digit's name).
        static_levels = [lv for lv in static_levels if lv[2] is not None]

        cell_shape = tuple(d for i, d in enumerate(info.shape) if i not in scan_axes)
        inner_grid = [()]
        for n in scan_sizes:
            inner_grid = [g + (i,) for g in inner_grid for i in range(n)]
        for inner in inner_grid:
            levels = []
            for pos in level_pos:
                if pos in scan_pos:
                    levels.append((pos, p.bases[pos], inner[scan_pos.index(pos)]))
                else:
                    for lv in static_levels:
                        if lv[0] == pos:
                            levels.append(lv)
            coord = tuple((name, idx) for _, name, idx in sorted(levels))
            unit = Unit(tensor=info.name, shape=cell_shape, root=root, coord=coord, local=local or info.name,
                        inner=inner, stacked_axes=scan_axes, expert=expert)
            if not coord:
                globals_.append(Unit(tensor=info.name, shape=cell_shape, root="", coord=(),
                                     local=_global_local(p, expert_pos), expert=expert))
                continue
            key = (root, coord)
            slot = slots.get(key)
            if slot is None:
                slot = slots[key] = Slot(root=root, coord=coord)
            slot.units.append(unit)
    return TreeStructure(tree=tree, slots=slots, globals=globals_)


def _per_name_scan(tree: ParamTree, names: list[str], cands: list[int]) -> dict[str, tuple]:
    """One scan whose layer axis sits at different places in different tensors (an encoder's kernels stacked at
    axis 1, its biases and norms at axis 0): the layer count is the one size every tensor of the group has
    among its first axes; each tensor's own first such axis (in the usual order 1, 0, 2, 3) is its layer axis.
    Empty when no single size, or several, qualify."""
    if len(names) < 2:
        return {}
    common = None
    for n in names:
        sizes = {d for d in tree[n].shape[:4] if d > 1}
        common = sizes if common is None else common & sizes
    if not common or len(common) != 1:
        return {}
    size = common.pop()
    out = {}
    for n in names:
        shape = tree[n].shape
        axis = next(a for a in (1, 0, 2, 3) if a < len(shape) and shape[a] == size)
        out[n] = (cands[:1], (axis,), (size,))
    return out


def _agree_across_collections(tree: ParamTree, groups: dict[str, list[str]], scan_cands: dict[str, list[int]],
                              scanned: dict[str, tuple]) -> None:
    """One scan, one size: groups whose prefixes differ only in their first token (flax variable collections,
    `params-decoder-scanned_blocks` beside `MoEBiasVar-decoder-scanned_blocks`) stack the same layers, so the
    scanned sizes the largest group shows hold for the others too; a smaller group whose own inference found
    other sizes (a [layers, experts] bias where both axes look alike) takes the axes that give those sizes."""
    by_rest: dict[str, list[str]] = defaultdict(list)
    for prefix in groups:
        rest = name_tokens(prefix, maxsplit=1)
        if len(rest) == 2:
            by_rest[rest[1]].append(prefix)
    for prefixes in by_rest.values():
        if len(prefixes) < 2:
            continue
        ref = max(prefixes, key=lambda pr: len(groups[pr]))
        if groups[ref][0] not in scanned:
            continue
        _, _, sizes = scanned[groups[ref][0]]
        for prefix in prefixes:
            names = groups[prefix]
            if prefix == ref or (names[0] in scanned and scanned[names[0]][2] == sizes):
                continue
            k = len(sizes)
            cands = scan_cands[names[0]]
            if len(cands) < k:
                continue
            for a in (0, 1, 2, 3):
                if all(tuple(tree[n].shape[a:a + k]) == sizes for n in names):
                    for n in names:
                        scanned[n] = (cands[:k], tuple(range(a, a + k)), sizes)
                    break


def _global_local(p: _Parsed, expert_pos: list[int]) -> str:
    toks = []
    for pos, tok in enumerate(p.tokens):
        toks.append("{e}" if pos in expert_pos and tok.isdigit() else tok)
    return _join(toks, p.seps)

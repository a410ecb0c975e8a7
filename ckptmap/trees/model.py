"""ParamTree: an ordered name -> (shape, dtype) view of a checkpoint, with each name parsed.

No weights are ever held here: readers fill a ParamTree from headers, configs or abstract shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Iterator, Mapping

from ckptmap.errors import TreeError

# The one name tokenizer: every module that cuts a parameter name into tokens uses name_tokens / name_separators.
NAME_SEPARATORS = re.compile(r"[./\-]")
_SUFFIX_INDEX = re.compile(r"^(?P<base>[A-Za-z][A-Za-z_]*?)_(?P<idx>\d+)$")
LAYER_WORDS = frozenset({"layers", "layer", "h", "blocks", "block", "decoder_layers", "dense_layers",
                         "moe_layers", "transformer_blocks", "encoder_layers", "resblocks"})
EXPERT_WORDS = frozenset({"experts", "expert", "local_experts"})


@dataclass(frozen=True)
class IndexedToken:
    """An index inside a name: `layers.3` gives collection 'layers', index 3, at token position pos."""

    collection: str
    index: int
    pos: int


@dataclass(frozen=True)
class ParsedName:
    """Tokens of a name and the indices found in it.

    `template` is the name with every index replaced by `{collection}`-style placeholders, so that all
    copies of one repeated layer share a template: `model.layers.3.mlp.up_proj.weight` ->
    `model.layers.{i}.mlp.up_proj.weight`.
    """

    name: str
    tokens: tuple[str, ...]
    indices: tuple[IndexedToken, ...]
    template: str

    @property
    def layer_index(self) -> int | None:
        for it in self.indices:
            if it.collection in LAYER_WORDS or "layer" in it.collection:
                return it.index
        return None

    @property
    def expert_index(self) -> int | None:
        for it in self.indices:
            if it.collection in EXPERT_WORDS or "expert" in it.collection:
                return it.index
        return None

    @property
    def words(self) -> tuple[str, ...]:
        """Tokens without numeric ones, with `layers_0` reduced to `layers`."""
        out = []
        for tok in self.tokens:
            if tok.isdigit():
                continue
            m = _SUFFIX_INDEX.match(tok)
            out.append(m.group("base") if m else tok)
        return tuple(out)


def name_tokens(name: str, maxsplit: int = 0) -> list[str]:
    """A name's tokens between `.`, `/` and `-`, empty ones kept (`a..b` -> [a, '', b]), so that
    name_separators(name) join them back into `name`."""
    return NAME_SEPARATORS.split(name, maxsplit)


def name_separators(name: str) -> list[str]:
    """The separators of `name` in order: one fewer than name_tokens(name)'s tokens."""
    return NAME_SEPARATORS.findall(name)


def parse_name(name: str) -> ParsedName:
    """Split a parameter name on `.`, `-`, `/` and find its layer / expert style indices."""
    tokens = tuple(t for t in name_tokens(name) if t != "")
    indices: list[IndexedToken] = []
    templ_tokens: list[str] = []
    for pos, tok in enumerate(tokens):
        if tok.isdigit():
            coll = tokens[pos - 1] if pos > 0 else ""
            indices.append(IndexedToken(coll, int(tok), pos))
            templ_tokens.append("{i}")
            continue
        m = _SUFFIX_INDEX.match(tok)
        if m:
            indices.append(IndexedToken(m.group("base"), int(m.group("idx")), pos))
            templ_tokens.append(m.group("base") + "_{i}")
            continue
        templ_tokens.append(tok)
    # Rebuild the template with the original separators.
    seps = name_separators(name)
    template = templ_tokens[0] if templ_tokens else ""
    for sep, tok in zip(seps, templ_tokens[1:]):
        template += sep + tok
    return ParsedName(name=name, tokens=tokens, indices=tuple(indices), template=template)


@dataclass(frozen=True)
class ParamInfo:
    """One parameter: its name, shape and dtype, plus (optionally) which axes are stacked copies.

    `stacked_axes` maps an axis of `shape` to what it stacks ("layers" for a scanned layer axis,
    "experts" for an expert axis); readers fill it when the source format says so (MaxText's
    `param_scan_axis`, an HF fused-experts tensor), and leave it empty when unknown.
    `tags` holds reader notes such as "tied" (shares storage with another) or "buffer".
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    stacked_axes: tuple[tuple[int, str], ...] = ()
    tags: tuple[str, ...] = ()

    @cached_property
    def parsed(self) -> ParsedName:
        return parse_name(self.name)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * dtype_itemsize(self.dtype)


_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e8m0fnu": 1, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2,
    "uint8": 1, "bool": 1, "complex64": 8,
}


def dtype_itemsize(dtype: str) -> int:
    return _ITEMSIZE.get(normalise_dtype(dtype), 4)


def normalise_dtype(dtype: str) -> str:
    """Map torch / numpy / safetensors spellings onto one name: `torch.bfloat16`, `BF16` -> `bfloat16`."""
    d = str(dtype).lower().replace("torch.", "").replace("jnp.", "")
    aliases = {"bf16": "bfloat16", "f32": "float32", "fp32": "float32", "f16": "float16", "fp16": "float16",
               "half": "float16", "float": "float32", "double": "float64", "f64": "float64", "i64": "int64",
               "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "u16": "uint16", "u32": "uint32",
               "u64": "uint64", "f8_e4m3": "float8_e4m3fn", "f8_e5m2": "float8_e5m2", "f8_e8m0": "float8_e8m0fnu"}
    return aliases.get(d, d)


@dataclass
class ParamTree:
    """Ordered name -> ParamInfo. `origin` says where it was read from (a path or a spec)."""

    params: dict[str, ParamInfo] = field(default_factory=dict)
    origin: str = ""
    framework: str = ""  # "hf", "maxtext", "safetensors", "orbax", "json"
    meta: dict = field(default_factory=dict)  # config numbers and reader notes (JSON-serialisable)

    @classmethod
    def from_items(cls, items: Iterable[ParamInfo], *, origin: str = "", framework: str = "",
                   meta: Mapping | None = None) -> "ParamTree":
        params: dict[str, ParamInfo] = {}
        for p in items:
            if p.name in params:
                raise TreeError("duplicated parameter name", file=origin or None, key=p.name)
            params[p.name] = p
        return cls(params=params, origin=origin, framework=framework, meta=dict(meta or {}))

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[ParamInfo]:
        return iter(self.params.values())

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def __getitem__(self, name: str) -> ParamInfo:
        return self.params[name]

    def names(self) -> list[str]:
        return list(self.params)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: p.shape for n, p in self.params.items()}

    @property
    def total_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @property
    def total_bytes(self) -> int:
        return sum(p.nbytes for p in self.params.values())

    def templates(self) -> dict[str, list[ParamInfo]]:
        """Group parameters by name template: one entry per distinct repeated-layer parameter."""
        groups: dict[str, list[ParamInfo]] = {}
        for p in self.params.values():
            groups.setdefault(p.parsed.template, []).append(p)
        return groups

    def to_json(self) -> dict:
        """Plain JSON: name -> {shape, dtype[, stacked_axes][, tags]}."""
        out = {}
        for n, p in self.params.items():
            d: dict = {"shape": list(p.shape), "dtype": p.dtype}
            if p.stacked_axes:
                d["stacked_axes"] = {str(a): what for a, what in p.stacked_axes}
            if p.tags:
                d["tags"] = list(p.tags)
            out[n] = d
        return out

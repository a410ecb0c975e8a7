"""Frameworks as adapters: the registry answers for every SPEC kind, and a new framework is one registration."""

from __future__ import annotations

import pytest

from ckptmap import frameworks
from ckptmap.errors import CkptmapError
from ckptmap.frameworks.base import Adapter
from ckptmap.trees import ParamInfo, ParamTree, read_tree
from ckptmap.trees.spec import TreeSpec, parse_spec


def test_every_spec_kind_has_exactly_one_adapter():
    kinds = [k for a in frameworks.adapters() for k in a.kinds]
    assert sorted(kinds) == sorted(set(kinds))
    assert set(kinds) >= {"hf_config", "hf_type", "maxtext", "json", "safetensors", "orbax"}
    assert frameworks.for_prefix("hf").name == "hf" and frameworks.for_prefix("maxtext").storage == "flax"


def test_a_new_framework_is_one_registration(monkeypatch):
    """A toy adapter registered under a new prefix is read by read_tree, with no change anywhere else."""
    def parse(prefix, target, rest, raw, parsed, text):
        return TreeSpec("toy", target, raw, parsed, text)

    def read(spec, layout):
        n = int(spec.overrides.get("width", 4))
        return ParamTree.from_items([ParamInfo(f"{spec.target}/w", (n, n), "float32")], origin=spec.text,
                                    framework="toy")

    toy = Adapter(name="toy", prefixes=("toy",), kinds=("toy",), parse=parse, read_tree=read)
    monkeypatch.setattr(frameworks, "_REGISTRY", dict(frameworks._REGISTRY))
    frameworks.adapters()
    frameworks.register(toy)
    assert parse_spec("toy:net width=3").kind == "toy"
    assert read_tree("toy:net width=3").shapes() == {"net/w": (3, 3)}


def test_a_spec_without_a_forward_pass_has_no_runner(tmp_path):
    from ckptmap.verify import runners_for

    tree = tmp_path / "t.json"
    tree.write_text('{"a": [2, 2]}')
    with pytest.raises(CkptmapError, match="no forward pass"):
        runners_for(str(tree), str(tree))


def test_two_adapters_cannot_claim_one_prefix(monkeypatch):
    monkeypatch.setattr(frameworks, "_REGISTRY", dict(frameworks._REGISTRY))
    frameworks.adapters()
    with pytest.raises(ValueError, match="both claim"):
        frameworks.register(Adapter(name="other", prefixes=("hf",), kinds=("x",), read_tree=lambda s, l: None))

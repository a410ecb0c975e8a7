"""Value-op kinds are registered once (transforms.value_kinds) and read by the LLM prompt and verify's search."""

import pytest

from ckptmap.llm_hints.prompt import OP_KINDS, RESPONSE_SCHEMA
from ckptmap.transforms import Offset, TransformError
from ckptmap.transforms.value_kinds import (VALUE_KINDS, VALUE_SLOTS, ValueKind, register_value_kind,
                                            value_options_for_roles)


def test_the_prompt_names_every_registered_kind_with_its_text():
    assert OP_KINDS == {k.name: k.description for k in VALUE_KINDS.values()}
    enum = RESPONSE_SCHEMA["properties"]["value_ops"]["items"]["properties"]["op"]["enum"]
    assert enum == list(VALUE_KINDS)


def test_each_value_kind_fills_a_slot_of_the_finishing_chain_or_is_structural():
    for kind in VALUE_KINDS.values():
        assert kind.slot in VALUE_SLOTS or (kind.slot is None and kind.options is None)
    assert VALUE_SLOTS == ("rope", "scale", "offset")


def test_a_norm_gets_both_offsets_and_a_query_rope_and_scale():
    norm = value_options_for_roles({"norm"}, (64,), {"hidden": 64})
    assert [o.op for o in norm["offset"]] == [Offset(1.0), Offset(-1.0)]
    q = value_options_for_roles({"query"}, (64, 64), {"head_dim": 16, "heads": 4})
    assert sorted(q) == ["rope", "scale"]
    assert [o.key for o in q["scale"]] == ["scale:1/sqrt(head_dim)", "scale:sqrt(head_dim)"]
    assert value_options_for_roles({"query"}, (64,), {"head_dim": 16, "heads": 4}) == {}


def test_a_kind_with_an_unknown_slot_is_refused():
    with pytest.raises(TransformError, match="slot"):
        register_value_kind(ValueKind("bias_shift", "a bias moved by a constant", slot="bias"))
    assert "bias_shift" not in VALUE_KINDS

"""Priors: edge bonuses and value-op orders over templates, and how a bad answer degrades to no hints."""

from pathlib import Path

import pytest

from ckptmap.llm_hints import HintsError, HintsWarning, Priors, load_priors_file, parse_answer
from ckptmap.llm_hints.record import read_spec
from ckptmap.llm_hints.templates import template_set

DATA = Path(__file__).parent / "data"
RESPONSES = DATA / "llm_hints" / "responses"
WRONG = DATA / "llm_hints" / "wrong" / "llama3.1.scan0.wrong.json"


def llama_priors() -> Priors:
    src = read_spec(str(DATA / "maxtext_tiny/llama3.1/hf_params.json"))
    tgt = read_spec(str(DATA / "maxtext_tiny/llama3.1/maxtext_params.scan0.json"))
    text = (RESPONSES / "llama3.1.scan0.txt").read_text()
    return parse_answer(text, src_templates=template_set(src), tgt_templates=template_set(tgt), model="m")


def test_edge_bonus_covers_every_layer_through_the_template():
    p = llama_priors()
    assert not p.is_empty and p.notes == []
    assert p.edge_bonus("model.layers.0.self_attn.q_proj.weight",
                        "params-decoder-layers_0-self_attention-query-kernel") == 0.96
    assert p.edge_bonus("model.layers.1.mlp.up_proj.weight", "params-decoder-layers_1-mlp-wi_1-kernel") == 0.88
    # the bonus is about templates, not about which layer pairs with which
    assert p.edge_bonus("model.layers.0.mlp.up_proj.weight", "params-decoder-layers_1-mlp-wi_1-kernel") == 0.88
    assert p.edge_bonus("model.layers.1.mlp.up_proj.weight", "params-decoder-layers_1-mlp-wi_0-kernel") == 0.0
    assert p.edge_bonus("model.norm.weight", "params-token_embedder-embedding") == 0.0


def test_coarse_parsed_templates_match_the_hints_they_cover():
    p = llama_priors()
    # ParsedName.template replaces wi_1 by wi_{i}: it stands for both MLP inputs
    assert p.edge_bonus("model.layers.{i}.mlp.up_proj.weight", "params-decoder-layers_{i}-mlp-wi_{i}-kernel") == 0.88
    assert p.edge_bonus("model.layers.{i}.self_attn.q_proj.weight",
                        "params-decoder-layers_{i}-mlp-wi_{i}-kernel") == 0.0
    # a precise target never inherits the bonus of its sibling
    assert p.edge_bonus("model.layers.{i}.mlp.up_proj.weight", "params-decoder-layers_3-mlp-wi_0-kernel") == 0.0


def test_value_ops_are_ordered_most_likely_first():
    p = llama_priors()
    assert p.value_ops("params-decoder-layers_5-self_attention-query-kernel") == [("rope_permute", 0.8),
                                                                                  ("scale_query", 0.6)]
    assert p.value_ops("params-decoder-layers_{i}-self_attention-key-kernel") == [("rope_permute", 0.8)]
    assert p.value_ops("params-decoder-layers_0-self_attention-value-kernel") == []
    assert p.sources_for("params-decoder-layers_2-self_attention-key-kernel") == [
        ("model.layers.{i}.self_attn.k_proj.weight", 0.96)]


def test_reversed_priors_swap_direction_and_carry_value_ops_to_the_sources():
    r = llama_priors().reversed()
    assert r.edge_bonus("params-decoder-layers_0-self_attention-query-kernel",
                        "model.layers.0.self_attn.q_proj.weight") == 0.96
    assert r.edge_bonus("model.layers.0.self_attn.q_proj.weight",
                        "params-decoder-layers_0-self_attention-query-kernel") == 0.0
    ops = r.value_ops("model.layers.3.self_attn.q_proj.weight")
    assert [k for k, _ in ops] == ["rope_permute", "scale_query"]
    assert ops[0][1] == pytest.approx(0.8 * 0.96)


def test_priors_json_round_trip():
    p = llama_priors()
    q = Priors.from_json(p.to_json())
    assert q.to_json() == p.to_json()
    assert q.edge_bonus("model.layers.0.self_attn.v_proj.weight",
                        "params-decoder-layers_0-self_attention-value-kernel") == 0.96


@pytest.mark.parametrize("name", ["truncated.txt", "wrong_shape.txt"])
def test_malformed_answer_gives_a_warning_and_empty_priors(name):
    with pytest.warns(HintsWarning, match="going on without hints"):
        p = parse_answer((RESPONSES / name).read_text(), origin="gemini:m")
    assert p.is_empty
    assert p.edge_bonus("a", "b") == 0.0 and p.value_ops("b") == []


@pytest.mark.parametrize("text", [None, "", "  \n"])
def test_empty_answer_gives_a_warning_and_empty_priors(text):
    with pytest.warns(HintsWarning, match="empty answer"):
        assert parse_answer(text).is_empty


def test_a_fenced_answer_is_read():
    p = parse_answer((RESPONSES / "fenced.txt").read_text())
    assert len(p.correspondences) == 12 and len(p.value_op_hints) == 3


def test_hallucinated_templates_unknown_ops_and_bad_confidences_are_dropped():
    src = read_spec(str(DATA / "maxtext_tiny/llama3.1/hf_params.json"))
    tgt = read_spec(str(DATA / "maxtext_tiny/llama3.1/maxtext_params.scan0.json"))
    p = parse_answer((RESPONSES / "partly_hallucinated.txt").read_text(), src_templates=template_set(src),
                     tgt_templates=template_set(tgt))
    assert [(c.source, c.target) for c in p.correspondences] == [
        ("model.embed_tokens.weight", "params-token_embedder-embedding"),
        ("lm_head.weight", "params-decoder-logits_dense-kernel")]
    assert sorted(p.notes) == ["dropped 1 malformed item(s)", "dropped 1 unknown op item(s)",
                               "dropped 1 unknown source item(s)"]
    # a confidence of 1.7 is clamped, not trusted beyond 1
    assert p.value_ops("params-decoder-layers_0-self_attention-key-kernel") == [("rope_permute", 1.0)]


def test_wrong_hint_file_loads_as_priors():
    p = load_priors_file(WRONG)
    assert p.origin == f"file:{WRONG}"
    assert p.edge_bonus("model.layers.0.self_attn.q_proj.weight",
                        "params-decoder-layers_0-self_attention-value-kernel") == 1.0
    assert p.edge_bonus("model.layers.0.self_attn.q_proj.weight",
                        "params-decoder-layers_0-self_attention-query-kernel") == 0.0
    assert p.value_ops("params-decoder-layers_0-self_attention-query-kernel") == []  # "no RoPE needed"
    assert p.value_ops("params-decoder-layers_1-pre_self_attention_layer_norm-scale") == [("norm_offset", 1.0)]


def test_load_priors_file_reads_priors_json_and_rejects_other_files(tmp_path):
    saved = tmp_path / "p.json"
    saved.write_text(__import__("json").dumps(llama_priors().to_json()))
    assert load_priors_file(saved).edge_bonus("model.norm.weight", "params-decoder-decoder_norm-scale") == 0.96
    with pytest.raises(HintsError, match="cannot read hints file") as e:
        load_priors_file(tmp_path / "missing.json")
    assert e.value.file == str(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(HintsError, match="expected a hints cache entry"):
        load_priors_file(bad)

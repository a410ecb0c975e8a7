"""get_priors: off / cache / gemini modes, the cache, and retries, with a fake Gemini client and a fake clock."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.genai import errors as genai_errors

from ckptmap.llm_hints import (DEFAULT_MODEL, HintsError, HintsWarning, RetryPolicy, build_prompt, cache_key,
                               get_priors, record_answer)
from ckptmap.llm_hints.cache import PACKAGED_DIR
from ckptmap.llm_hints.record import read_spec
from ckptmap.llm_hints.templates import template_set

DATA = Path(__file__).parent / "data"
RESPONSES = DATA / "llm_hints" / "responses"
GOOD = (RESPONSES / "llama3.1.scan0.txt").read_text()
QUERY = "params-decoder-layers_0-self_attention-query-kernel"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
# The config numbers the committed tiny entries were recorded with (ckptmap/llm_hints/cache/*.json, "prompt").
RECORDED_DIMS = {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 128, "layers": 2, "vocab": 256}


class FakeModels:
    """Serves recorded replies in order; an exception in the list is raised, anything else returned."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def generate_content(self, *, model, contents, config=None):
        self.calls.append({"model": model, "contents": contents, "config": config})
        if not self.replies:
            raise AssertionError("the fake client was called more often than expected")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


class FakeClient:
    def __init__(self, *replies):
        self.models = FakeModels(replies)


def text(t):
    return SimpleNamespace(text=t)


def rate_limited():
    return genai_errors.ClientError(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                                    "message": "Resource has been exhausted"}})


@pytest.fixture
def llama():
    return (read_spec(str(DATA / "maxtext_tiny/llama3.1/hf_params.json")),
            read_spec(str(DATA / "maxtext_tiny/llama3.1/maxtext_params.scan0.json")))


@pytest.fixture(autouse=True)
def private_user_cache(tmp_path, monkeypatch):
    """The user's cache dir is a fresh temp dir: tests never see or write ~/.cache."""
    monkeypatch.setenv("CKPTMAP_HINTS_DIR", str(tmp_path / "user-cache"))
    monkeypatch.delenv("CKPTMAP_GEMINI_MODEL", raising=False)


def test_off_builds_nothing():
    p = get_priors(None, None, mode="off")  # no tree is even looked at
    assert p.is_empty and p.origin == "off"


def test_unknown_mode_is_a_clear_error(llama):
    with pytest.raises(HintsError, match="unknown hints mode 'always'"):
        get_priors(*llama, mode="always")


def test_gemini_asks_once_then_answers_from_the_cache(llama, tmp_path):
    client = FakeClient(text(GOOD))
    p = get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=client, model="gemini-test")
    assert p.edge_bonus(Q_PROJ, QUERY) == 0.96
    assert p.value_ops(QUERY) == [("rope_permute", 0.8), ("scale_query", 0.6)]
    call = client.models.calls[0]
    assert call["model"] == "gemini-test"
    assert call["contents"] == build_prompt(*llama)
    assert call["config"].response_mime_type == "application/json"
    assert call["config"].response_schema is not None
    key = cache_key(build_prompt(*llama), "gemini-test")
    entry = json.loads((tmp_path / f"{key}.json").read_text())
    assert entry["model"] == "gemini-test" and entry["recorded_by"] == "gemini-test via google-genai"
    assert [f.name for f in tmp_path.iterdir()] == [f"{key}.json"]  # atomic: no temp file left over

    again = get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=FakeClient(), model="gemini-test")
    assert again.origin == f"cache:{tmp_path / (key + '.json')}"
    assert again.to_json()["correspondences"] == p.to_json()["correspondences"]


def test_cache_mode_reads_the_cache_and_never_calls_out(llama, tmp_path):
    get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=FakeClient(text(GOOD)), model="gemini-test")
    p = get_priors(*llama, mode="cache", cache_dir=tmp_path, model="gemini-test")
    assert p.edge_bonus(Q_PROJ, QUERY) == 0.96


def test_cache_miss_in_cache_mode_warns_and_gives_empty_priors(llama, tmp_path):
    with pytest.warns(HintsWarning, match="no recorded answer"):
        p = get_priors(*llama, mode="cache", cache_dir=tmp_path / "empty")
    assert p.is_empty


def test_committed_cache_serves_the_tiny_fixtures_offline():
    for family, target_spec, q_target, query_ops in [
        ("llama3.1", "maxtext_params.scan0.json", QUERY, ["rope_permute", "scale_query"]),
        ("llama3.1", "maxtext_params.scan1.json", "params-decoder-layers-self_attention-query-kernel",
         ["rope_permute", "scale_query"]),
        ("qwen3", "maxtext_params.scan0.json", QUERY, ["rope_permute"]),
        ("qwen3", "maxtext_params.scan1.json", "params-decoder-layers-self_attention-query-kernel",
         ["rope_permute"]),
    ]:
        src = read_spec(str(DATA / "maxtext_tiny" / family / "hf_params.json"))
        tgt = read_spec(str(DATA / "maxtext_tiny" / family / target_spec))
        p = get_priors(src, tgt, mode="cache")
        assert p.origin.startswith(f"cache:{PACKAGED_DIR}"), (family, target_spec)
        assert p.notes == [], (family, target_spec)
        assert p.edge_bonus(Q_PROJ, q_target) == 0.96
        assert [k for k, _ in p.value_ops(q_target)] == query_ops
        assert template_set(tgt) <= {c.target for c in p.correspondences}, (family, target_spec)

        # with the config numbers the entry was recorded with, the prompt is the same: an exact key hit
        exact = get_priors(src, tgt, mode="cache", dims=RECORDED_DIMS)
        key = cache_key(build_prompt(src, tgt, RECORDED_DIMS), DEFAULT_MODEL)
        assert exact.origin == f"cache:{PACKAGED_DIR / (key + '.json')}"


def test_committed_entries_say_they_were_hand_written():
    entries = sorted(PACKAGED_DIR.glob("*.json"))
    assert len(entries) >= 4
    for path in entries:
        entry = json.loads(path.read_text())
        assert "hand-written" in entry["recorded_by"] and "NOT from Gemini" in entry["recorded_by"]


def test_same_architecture_at_full_size_and_reversed_uses_the_recorded_answer():
    src = read_spec(str(DATA / "agent_context/llama3/hf_params.json"))  # 32 layers, 8B widths
    tgt = read_spec(str(DATA / "agent_context/llama3/maxtext_params.json"))
    p = get_priors(src, tgt, mode="cache")
    assert p.edge_bonus("model.layers.31.self_attn.q_proj.weight",
                        "params-decoder-layers_31-self_attention-query-kernel") == 0.96
    back = get_priors(tgt, src, mode="cache")  # MaxText -> HF
    assert back.origin.endswith("(reversed)")
    assert back.edge_bonus("params-decoder-layers_4-mlp-wi_0-kernel", "model.layers.4.mlp.gate_proj.weight") == 0.88
    assert back.value_ops("model.layers.4.self_attn.k_proj.weight")[0][0] == "rope_permute"


def test_wrong_hints_are_served_from_their_own_cache_dir(llama):
    p = get_priors(*llama, mode="cache", cache_dir=DATA / "llm_hints" / "wrong")
    assert p.edge_bonus(Q_PROJ, "params-decoder-layers_0-self_attention-value-kernel") == 1.0


def test_retries_on_none_empty_and_rate_limit_with_backoff(llama, tmp_path):
    slept = []
    client = FakeClient(None, text(None), text(""), rate_limited(), text(GOOD))
    p = get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=client, model="m", sleep=slept.append)
    assert len(client.models.calls) == 5
    assert slept == [2.0, 4.0, 8.0, 16.0]
    assert p.edge_bonus(Q_PROJ, QUERY) == 0.96


def test_backoff_is_capped():
    policy = RetryPolicy(attempts=10, base=2.0, factor=2.0, max_wait=60.0)
    assert [policy.wait(i) for i in range(7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_giving_up_after_the_last_retry_warns_and_gives_empty_priors(llama, tmp_path):
    slept = []
    client = FakeClient(rate_limited(), rate_limited(), rate_limited())
    with pytest.warns(HintsWarning, match="gave up after 3 tries .*RESOURCE_EXHAUSTED"):
        p = get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=client, model="m",
                       sleep=slept.append, policy=RetryPolicy(attempts=3, base=1.0))
    assert p.is_empty and slept == [1.0, 2.0]
    assert list(tmp_path.iterdir()) == []  # nothing cached


def test_malformed_answer_warns_gives_empty_priors_and_is_not_cached(llama, tmp_path):
    client = FakeClient(text((RESPONSES / "truncated.txt").read_text()))
    with pytest.warns(HintsWarning, match="not JSON"):
        p = get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=client, model="m", sleep=lambda s: None)
    assert p.is_empty
    assert list(tmp_path.iterdir()) == []


def test_a_rejected_request_is_a_clear_error(llama, tmp_path):
    denied = genai_errors.ClientError(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                                      "message": "API key not valid"}})
    with pytest.raises(HintsError, match="Gemini rejected the request: 403 PERMISSION_DENIED") as e:
        get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=FakeClient(denied), model="m")
    assert e.value.key == "m"


def test_gemini_without_a_key_is_a_clear_error(llama, tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(HintsError, match=r"needs an API key in \$GEMINI_API_KEY"):
        get_priors(*llama, mode="gemini", cache_dir=tmp_path)


def test_gemini_mode_uses_a_cache_hit_without_a_key(llama, tmp_path, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    get_priors(*llama, mode="gemini", cache_dir=tmp_path, client=FakeClient(text(GOOD)))
    p = get_priors(*llama, mode="gemini", cache_dir=tmp_path)  # hit: no client is built
    assert not p.is_empty


def test_user_dir_overlays_the_packaged_cache(llama, tmp_path):
    user = tmp_path / "user-cache"
    prompt = build_prompt(*llama)
    record_answer(*llama, {"correspondences": [{"source": "model.norm.weight",
                                               "target": "params-decoder-decoder_norm-scale",
                                               "confidence": 0.5}], "value_ops": []},
                  recorded_by="test", cache_dir=user, prompt=prompt)
    p = get_priors(*llama, mode="cache")
    assert p.origin.startswith(f"cache:{user}")
    assert p.edge_bonus("model.norm.weight", "params-decoder-decoder_norm-scale") == 0.5


def test_cli_options_give_priors_and_print_warnings_as_one_line(llama, tmp_path):
    import argparse
    import io

    from ckptmap.llm_hints.cli_args import add_hint_arguments, describe, priors_from_args

    parser = argparse.ArgumentParser()
    add_hint_arguments(parser)
    assert parser.parse_args([]).hints == "off"

    err = io.StringIO()
    p = priors_from_args(parser.parse_args(["--hints", "cache"]), *llama, stream=err)
    assert p.edge_bonus(Q_PROJ, QUERY) == 0.96 and err.getvalue() == ""
    assert describe(p).startswith("hints: 12 correspondences, 3 value ops from cache:")

    err = io.StringIO()
    args = parser.parse_args(["--hints", "cache", "--hints-cache", str(tmp_path)])
    assert priors_from_args(args, *llama, stream=err).is_empty
    assert err.getvalue().startswith("ckptmap: hints: hints cache: no recorded answer for this pair")
    assert err.getvalue().count("\n") == 1

    wrong = DATA / "llm_hints" / "wrong" / "llama3.1.scan0.wrong.json"
    p = priors_from_args(parser.parse_args(["--hints-file", str(wrong)]), *llama)
    assert p.edge_bonus(Q_PROJ, "params-decoder-layers_0-self_attention-value-kernel") == 1.0


def test_record_command_writes_an_entry_the_cache_mode_finds(llama, tmp_path, capsys):
    from ckptmap.llm_hints.record import main

    src = str(DATA / "maxtext_tiny/llama3.1/hf_params.json")
    tgt = str(DATA / "maxtext_tiny/llama3.1/maxtext_params.scan0.json")
    answer = str(DATA / "llm_hints/answers/llama3.1.scan0.json")
    rc = main(["--source", src, "--target", tgt, "--answer", answer, "--recorded-by", "a test",
               "--dims", "hidden=64", "--cache-dir", str(tmp_path)])
    assert rc == 0
    key = cache_key(build_prompt(*llama, {"hidden": 64}), DEFAULT_MODEL)
    assert capsys.readouterr().out.strip() == str(tmp_path / f"{key}.json")
    p = get_priors(*llama, mode="cache", cache_dir=tmp_path, dims={"hidden": 64})
    assert p.origin == f"cache:{tmp_path / (key + '.json')}"

    rc = main(["--source", src, "--target", tgt, "--answer", str(tmp_path / "none.json"), "--recorded-by", "x",
               "--cache-dir", str(tmp_path)])
    assert rc == 2
    assert "none.json: cannot read the answer" in capsys.readouterr().err


def test_a_tree_read_slightly_differently_still_finds_its_recorded_answer(llama):
    from ckptmap.trees.model import ParamTree

    src, tgt = llama
    # a reader that drops the untied lm_head (one template of twelve) still gets the hints
    trimmed = ParamTree.from_items([p for p in src if p.name != "lm_head.weight"], origin="trimmed")
    p = get_priors(trimmed, tgt, mode="cache")
    assert p.edge_bonus(Q_PROJ, QUERY) == 0.96
    assert "recorded for similar trees (template overlap 0.92)" in p.notes
    assert "dropped 1 unknown source item(s)" in p.notes  # lm_head -> logits_dense


def test_another_architecture_does_not_borrow_an_answer(tmp_path):
    llama_src = read_spec(str(DATA / "maxtext_tiny/llama3.1/hf_params.json"))
    llama_tgt = read_spec(str(DATA / "maxtext_tiny/llama3.1/maxtext_params.scan0.json"))
    answer = json.loads((RESPONSES / "llama3.1.scan0.txt").read_text())
    record_answer(llama_src, llama_tgt, answer, recorded_by="test", cache_dir=tmp_path)
    mixtral = (read_spec(str(DATA / "maxtext_tiny/mixtral/hf_params.json")),
               read_spec(str(DATA / "maxtext_tiny/mixtral/maxtext_params.scan0.json")))
    with pytest.warns(HintsWarning, match="no recorded answer"):
        assert get_priors(*mixtral, mode="cache", cache_dir=tmp_path).is_empty

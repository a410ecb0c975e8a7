"""The MaxText client side without MaxText: overrides, tree building, the .npy protocol, layer ordering, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ckptmap.maxtext import protocol
from ckptmap.maxtext.capture import LayerCall, order_layer_calls
from ckptmap.maxtext.errors import MaxTextError, one_line
from ckptmap.maxtext.overrides import CPU_OVERRIDES, merge_overrides, split_override, with_scan_layers
from ckptmap.maxtext.tree import dims_from_config, stacked_axes_of, tree_from_description


def test_user_override_wins_and_keeps_first_position():
    merged = merge_overrides(("dtype=float32", "hardware=cpu"), ("hardware=gpu", "base_emb_dim=64"))
    assert merged == ("dtype=float32", "hardware=gpu", "base_emb_dim=64")


def test_cpu_overrides_include_the_dense_moe_path():
    keys = dict(split_override(o) for o in CPU_OVERRIDES)
    assert keys["megablox"] == "false" and keys["sparse_matmul"] == "false" and keys["capacity_factor"] == "-1"
    assert keys["dtype"] == "float32" and keys["attention"] == "dot_product"


def test_scan_layers_flag_replaces_the_callers_value():
    assert with_scan_layers(("scan_layers=true", "vocab_size=256"), False) == ("scan_layers=false", "vocab_size=256")
    assert with_scan_layers(("vocab_size=256",), None) == ("vocab_size=256",)


def test_override_without_a_key_is_a_one_line_error():
    with pytest.raises(MaxTextError) as e:
        merge_overrides((), ("base_emb_dim",), origin="maxtext:llama3.1-8b")
    assert "maxtext:llama3.1-8b" in e.value.one_line() and "key=value" in e.value.one_line()


def test_multiline_maxtext_messages_become_one_line():
    assert one_line("1 validation error\n  vocab_size\n    must be > 0\n") == "1 validation error | vocab_size | must be > 0"


def test_logical_axis_names_give_layer_and_expert_axes():
    axes = ["exp", "moe_layers", "embed_moe", "mlp_moe"]
    assert stacked_axes_of("params-decoder-moe_layers-MoeBlock_0-wi_0", (4, 2, 64, 32), axes, {}) == (
        (0, "experts"), (1, "layers"))
    # no logical names: a scanned model's param_scan_axis, for parameters under a scan collection only
    cfg = {"scan_layers": True, "param_scan_axis": 1}
    assert stacked_axes_of("params-decoder-layers-mlp-wo-kernel", (128, 2, 64), None, cfg) == ((1, "layers"),)
    assert stacked_axes_of("params-decoder-logits_dense-kernel", (64, 256), None, cfg) == ()


def test_dims_use_canonical_names_and_mla_drops_head_dim():
    llama = {"emb_dim": 64, "num_query_heads": 4, "num_kv_heads": 2, "head_dim": 16, "mlp_dim": 128,
             "num_decoder_layers": 2, "vocab_size": 256, "num_experts": 1, "moe_mlp_dim": -1}
    assert dims_from_config(llama) == {"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 128,
                                       "layers": 2, "vocab": 256}
    mla = dict(llama, attention_type="mla", head_dim=128, num_experts=4, moe_mlp_dim=32, kv_lora_rank=32,
               q_lora_rank=0, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    dims = dims_from_config(mla)
    assert "head_dim" not in dims and "q_lora_rank" not in dims
    assert (dims["experts"], dims["moe_mlp"], dims["kv_lora_rank"], dims["qk_rope_head_dim"]) == (4, 32, 32, 8)


def test_description_becomes_a_maxtext_tree_with_tied_tag():
    desc = {"model_name": "qwen3-0.6b", "overrides": ["scan_layers=true"],
            "config": {"emb_dim": 64, "vocab_size": 256, "logits_via_embedding": True, "scan_layers": True},
            "params": [{"name": "params-token_embedder-embedding", "shape": [256, 64], "dtype": "float32",
                        "axes": ["vocab", "embed_vocab"]},
                       {"name": "params-decoder-layers-mlp-wo-kernel", "shape": [128, 2, 64], "dtype": "float32",
                        "axes": ["mlp", "layers", "embed"]}]}
    tree = tree_from_description(desc, origin="maxtext:qwen3-0.6b")
    assert tree.framework == "maxtext" and tree.names() == [p["name"] for p in desc["params"]]
    assert tree["params-token_embedder-embedding"].tags == ("tied",)
    assert tree["params-decoder-layers-mlp-wo-kernel"].stacked_axes == ((1, "layers"),)
    assert tree.meta["dims"] == {"hidden": 64, "vocab": 256}
    assert tree.meta["config"]["logits_via_embedding"] is True


def test_arrays_round_trip_through_npy_files_without_pickle(tmp_path):
    arrays = {"params-decoder-layers_0-mlp-wo-kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
              "tokens with / odd name": np.array([[1, 2]], dtype=np.int32)}
    manifest = protocol.save_arrays(arrays, tmp_path)
    assert sorted(manifest.values()) == ["a0.npy", "a1.npy"]
    back = protocol.load_arrays(manifest, tmp_path)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and np.array_equal(back[name], a)


def test_protocol_lines_are_single_json_objects():
    line = protocol.encode({"op": "forward", "params": {"a": "a0.npy"}})
    assert line.endswith("\n") and line.count("\n") == 1
    assert protocol.decode(line) == {"op": "forward", "params": {"a": "a0.npy"}}
    with pytest.raises(ValueError):
        protocol.decode(json.dumps([1, 2]))


def _chain(n: int, rng) -> list[np.ndarray]:
    return [rng.standard_normal((1, 4, 8)).astype(np.float32) for _ in range(n + 1)]


def test_layer_calls_are_ordered_by_following_the_data():
    rng = np.random.default_rng(0)
    h = _chain(5, rng)
    calls = [LayerCall(f"slot{i}", h[i], h[i + 1]) for i in range(5)]
    shuffled = [calls[3], calls[0], calls[4], calls[2], calls[1]]
    ordered, notes = order_layer_calls(shuffled, expected=5)
    assert [c.label for c in ordered] == ["slot0", "slot1", "slot2", "slot3", "slot4"] and notes == []


def test_a_side_block_does_not_join_the_main_chain():
    rng = np.random.default_rng(1)
    h = _chain(3, rng)
    side = LayerCall("mtp", rng.standard_normal((1, 4, 8)).astype(np.float32), h[3] * 2)
    calls = [LayerCall("layers[1]", h[1], h[2]), side, LayerCall("layers[0]", h[0], h[1]),
             LayerCall("layers[2]", h[2], h[3])]
    ordered, notes = order_layer_calls(calls, expected=3)
    assert [c.label for c in ordered] == ["layers[0]", "layers[1]", "layers[2]"] and notes == []


def test_unchainable_calls_fall_back_with_a_note():
    rng = np.random.default_rng(2)
    calls = [LayerCall(f"x{i}", *rng.standard_normal((2, 1, 4, 8)).astype(np.float32)) for i in range(3)]
    ordered, notes = order_layer_calls(calls, expected=3)
    assert [c.label for c in ordered] == ["x0", "x1", "x2"] and "could not chain" in notes[0]


def test_missing_worker_python_is_a_clear_error(monkeypatch, tmp_path):
    from ckptmap.maxtext import sessions

    monkeypatch.setenv("CKPTMAP_MAXTEXT_PYTHON", str(tmp_path / "no-such-python"))
    s = sessions.MaxTextSession("llama3.1-8b", CPU_OVERRIDES, transport_kind="subprocess")
    with pytest.raises(MaxTextError) as e:
        s.abstract_tree()
    message = e.value.one_line()
    assert message.startswith("maxtext:llama3.1-8b:") and "CKPTMAP_MAXTEXT_PYTHON" in message


def _fake_worker_python(tmp_path, body: str):
    """An executable that passes the 'can it import maxtext' probe (`-c ...`) and otherwise runs `body`."""
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return script


def test_a_silent_worker_is_stopped_after_the_timeout(monkeypatch, tmp_path):
    from ckptmap.maxtext import sessions

    monkeypatch.setenv("CKPTMAP_MAXTEXT_PYTHON", str(_fake_worker_python(tmp_path, "sleep 30")))
    monkeypatch.setenv("CKPTMAP_MAXTEXT_TIMEOUT_S", "1")
    s = sessions.MaxTextSession("llama3.1-8b", CPU_OVERRIDES, transport_kind="subprocess")
    with pytest.raises(MaxTextError) as e:
        s.abstract_tree()
    assert "gave no answer to build within 1 s" in e.value.one_line()


def test_a_dying_worker_reports_its_log(monkeypatch, tmp_path):
    from ckptmap.maxtext import sessions

    monkeypatch.setenv("CKPTMAP_MAXTEXT_PYTHON", str(_fake_worker_python(tmp_path, "echo 'boom: no jax' >&2; exit 3")))
    s = sessions.MaxTextSession("llama3.1-8b", CPU_OVERRIDES, transport_kind="subprocess")
    with pytest.raises(MaxTextError) as e:
        s.abstract_tree()
    message = e.value.one_line()
    assert "worker died" in message and "build (code 3)" in message and "boom: no jax" in message

"""Fused-axis layouts read off real MaxText models' jaxprs (MaxTextSession.fused_layouts, through the worker)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ckptmap import maxtext
from ckptmap.maxtext.overrides import with_scan_layers

pytestmark = pytest.mark.maxtext

DATA = Path(__file__).parent / "data" / "maxtext_tiny"
GDN_LAYERS = (0, 1, 2, 4, 5, 6)  # the fixtures' linear-attention (gated delta net) layers; 3 and 7 attend fully
QKVZ = {"rounds": 2, "blocks": [16, 16, 32, 32]}  # Hk=2 groups of [Dk | Dk | VpK*Dv | VpK*Dv]
BA = {"rounds": 2, "blocks": [2, 2]}  # Hk=2 groups of [VpK | VpK]
CONV = {"rounds": 1, "blocks": [32, 32, 64]}  # the conv channels are [q | k | v]
QUERY_GATE = {"rounds": 1, "blocks": [16, 16]}  # full attention's query kernel [emb, H, 2*D]: per head [q | gate]


@pytest.fixture(scope="module", autouse=True)
def maxtext_is_reachable():
    assert maxtext.available(), "MaxText is not reachable: build .venv-maxtext (make setup) or set CKPTMAP_MAXTEXT_PYTHON"


def layouts_of(family: str, scan: int, *, fixture: bool = True):
    """The session's layouts, checked for consistency against its tree (and the family's fixture tree)."""
    cfg = json.loads((DATA / family / "config.json").read_text())
    s = maxtext.session(cfg["maxtext_model_name"], with_scan_layers(cfg["maxtext_overrides"], bool(scan)))
    shapes = {k: list(v) for k, v in s.param_shapes().items()}
    if fixture:
        assert shapes == json.loads((DATA / family / f"maxtext_params.scan{scan}.json").read_text())
    layouts = s.fused_layouts()
    for name, layout in layouts.items():
        assert name in shapes, name
        assert set(layout) == {"axis", "rounds", "blocks"}
        assert 0 <= layout["axis"] < len(shapes[name])
        assert layout["rounds"] * sum(layout["blocks"]) == shapes[name][layout["axis"]], name
        assert len(layout["blocks"]) >= 2
    return layouts


def without_rope_cuts(layouts: dict) -> dict:
    """Drop the cuts partial RoPE makes on full attention's key kernel and q/k norm scales (harmless tags)."""
    return {k: v for k, v in layouts.items() if not re.search(r"attention-(key-kernel|(query|key)_norm-scale)$", k)}


def with_axis(axis: int, layout: dict) -> dict:
    return {"axis": axis, **layout}


@pytest.mark.parametrize("family", ["qwen3.5", "qwen3-next"])
def test_gated_delta_net_layouts_unscanned(family):
    layouts = layouts_of(family, 0)
    expected = {}
    for i in GDN_LAYERS:
        prefix = f"params-decoder-layers_{i}-attention-"
        expected[prefix + "in_proj_qkvz-kernel"] = with_axis(1, QKVZ)
        expected[prefix + "in_proj_ba-kernel"] = with_axis(1, BA)
        expected[prefix + "conv1d-kernel"] = with_axis(2, CONV)
    for i in (3, 7):
        expected[f"params-decoder-layers_{i}-attention-attention-query-kernel"] = with_axis(2, QUERY_GATE)
    assert without_rope_cuts(layouts) == expected


def test_gated_delta_net_layouts_scanned_name_the_stacked_tensors():
    layouts = layouts_of("qwen3.5", 1)
    expected = {}
    for i in range(3):  # one scanned block of 4 layers: layer_0..2 linear attention, layer_3 full attention
        prefix = f"params-decoder-layers-layer_{i}-attention-"
        expected[prefix + "in_proj_qkvz-kernel"] = with_axis(2, QKVZ)  # [emb, layers, N]
        expected[prefix + "in_proj_ba-kernel"] = with_axis(2, BA)
        expected[prefix + "conv1d-kernel"] = with_axis(3, CONV)  # [kernel, layers, 1, channels]
    expected["params-decoder-layers-layer_3-attention-attention-query-kernel"] = with_axis(3, QUERY_GATE)
    assert without_rope_cuts(layouts) == expected


@pytest.mark.parametrize("scan", [0, 1])
def test_llama_has_no_fused_layouts(scan):
    layouts = layouts_of("llama3.1", scan)
    # Rotary embeddings may cut the query / key head dim; nothing else may be cut.
    assert all(re.search(r"self_attention-(query|key)-kernel$", k) for k in layouts), sorted(layouts)


def test_qwen3_next_scanned_layouts_name_its_nested_stacks():
    # MaxText 0.2.5 scans qwen3-next as blocks of [3 stacked linear-attention layers | 1 global layer], which
    # the bundled scan1 fixture (another MaxText version: layer_0..layer_3) does not name; checked against the
    # live tree. The global layer runs inside a scan that hands its parameters through as carries.
    layouts = layouts_of("qwen3-next", 1, fixture=False)
    prefix = "params-decoder-layers-local_layers-attention-"  # [emb, blocks, 3, N]
    assert without_rope_cuts(layouts) == {
        prefix + "in_proj_qkvz-kernel": with_axis(3, QKVZ),
        prefix + "in_proj_ba-kernel": with_axis(3, BA),
        prefix + "conv1d-kernel": with_axis(4, CONV),  # [kernel, blocks, 3, 1, channels]
        "params-decoder-layers-global_layer-attention-attention-query-kernel": with_axis(3, QUERY_GATE),
    }

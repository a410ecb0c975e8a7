"""orbax: trees from a real Orbax checkpoint written here with orbax-checkpoint, read from metadata only."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ckptmap.errors import TreeError
from ckptmap.trees import read_tree


def train_state() -> dict:
    """A MaxText-like train state: `params.params.decoder...`, an optimizer state and a step."""
    params = {"decoder": {"decoder_norm": {"scale": np.ones((8,), dtype=jnp.bfloat16)},
                          "layers": {"mlp": {"wi_0": {"kernel": np.zeros((8, 2, 16), np.float32)}},
                                     "self_attention": {"query": {"kernel": np.zeros((8, 2, 4, 2), np.float32)}}}},
              "token_embedder": {"embedding": np.zeros((32, 8), np.float32)}}
    mu = {"decoder": {"decoder_norm": {"scale": np.zeros((8,), np.float32)}}}
    return {"params": {"params": params}, "opt_state": {"mu": mu}, "step": np.int32(3)}


@pytest.fixture(scope="module")
def step_dir(tmp_path_factory) -> str:
    """`<root>/7/items`, the layout MaxText's checkpoint manager writes."""
    root = tmp_path_factory.mktemp("ckpt")
    ocp.PyTreeCheckpointer().save(str(root / "7" / "items"), train_state())
    return str(root)


EXPECTED = {
    "params-decoder-decoder_norm-scale": ((8,), "bfloat16"),
    "params-decoder-layers-mlp-wi_0-kernel": ((8, 2, 16), "float32"),
    "params-decoder-layers-self_attention-query-kernel": ((8, 2, 4, 2), "float32"),
    "params-token_embedder-embedding": ((32, 8), "float32"),
}


@pytest.mark.parametrize("where", ["root", "step", "items"])
def test_train_state_names_joined_like_maxtext(step_dir, where):
    target = {"root": step_dir, "step": os.path.join(step_dir, "7"),
              "items": os.path.join(step_dir, "7", "items")}[where]
    tree = read_tree(f"orbax:{target}")
    assert {n: (p.shape, p.dtype) for n, p in tree.params.items()} == EXPECTED
    assert tree.framework == "orbax" and tree.meta["naming"] == "maxtext"
    assert tree.meta["skipped_items"] == ["opt_state", "step"]


def test_bare_orbax_directory_is_detected(step_dir):
    assert read_tree(os.path.join(step_dir, "7", "items")).framework == "orbax"


def test_params_only_checkpoint(tmp_path):
    ocp.PyTreeCheckpointer().save(str(tmp_path / "c"), {"params": {"decoder": {"w": np.zeros((3, 5), np.float32)}}})
    assert read_tree(f"orbax:{tmp_path / 'c'}").shapes() == {"params-decoder-w": (3, 5)}


def test_directory_without_metadata(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TreeError, match="no Orbax tree metadata"):
        read_tree(f"orbax:{tmp_path / 'empty'}")


def test_missing_directory(tmp_path):
    with pytest.raises(TreeError) as e:
        read_tree(f"orbax:{tmp_path / 'gone'}")
    assert e.value.one_line() == f"{tmp_path / 'gone'}: no such Orbax checkpoint directory"

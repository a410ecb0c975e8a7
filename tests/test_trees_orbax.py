"""orbax: trees from a real Orbax checkpoint written here with orbax-checkpoint, read from metadata only."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys

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


def test_metadata_is_read_without_jax_or_orbax(step_dir):
    """Shapes and dtypes come from `_METADATA` and the arrays' Zarr metadata through TensorStore alone, so reading
    an Orbax tree or converting from one does not pay for importing JAX and Orbax."""
    code = ("import sys; from ckptmap.trees import read_tree; "
            f"t = read_tree('orbax:{step_dir}'); "
            "print(sorted(t.shapes().items())); print('jax' in sys.modules, 'orbax.checkpoint' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == str(sorted((n, s) for n, (s, _) in EXPECTED.items()))
    assert out[1] == "False False"


def test_an_array_listed_but_not_stored_is_named(step_dir, tmp_path, caplog):
    """A `_METADATA` that lists an array the checkpoint does not hold: the error names it, and no asynchronous
    work is left behind to log later (Orbax's own metadata call left failed tasks and TensorStore callbacks on a
    closed event loop, which printed tracebacks from other threads in the middle of later tests)."""
    items = tmp_path / "c" / "items"
    shutil.copytree(os.path.join(step_dir, "7", "items"), items)
    meta = json.loads((items / "_METADATA").read_text())
    key = "('params', 'params', 'decoder', 'layers', 'mlp', 'wi_0', 'kernel')"
    entry = meta["tree_metadata"].pop(key)
    entry["key_metadata"][-2]["key"] = "wi_9"
    meta["tree_metadata"][key.replace("wi_0", "wi_9")] = entry
    (items / "_METADATA").write_text(json.dumps(meta))
    with pytest.raises(TreeError) as e:
        read_tree(f"orbax:{items}")
    assert e.value.key == "params-decoder-layers-mlp-wi_9-kernel"
    assert "does not open" in e.value.one_line()
    gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio"]


@pytest.mark.parametrize("use_ocdbt", [False, True], ids=["per-array-dirs", "ocdbt"])
@pytest.mark.parametrize("use_zarr3", [False, True], ids=["zarr2", "zarr3"])
def test_every_storage_form_reads_through_tensorstore(tmp_path, use_ocdbt, use_zarr3):
    """Orbax's four storage forms (an OCDBT database or a directory per array; Zarr v2 or v3), as older and newer
    MaxText checkpoints hold them: the values read back exactly, without importing Orbax or JAX."""
    w = np.arange(15, dtype=np.float32).reshape(3, 5)
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt, use_zarr3=use_zarr3)
    ocp.Checkpointer(handler).save(str(tmp_path / "c"),
                                   args=ocp.args.PyTreeSave({"params": {"params": {"decoder": {"w": w}}},
                                                             "step": np.int32(1)}))
    code = ("import sys; from ckptmap import checkpoint_io as cio; "
            f"r = cio.open_reader('orbax:{tmp_path / 'c'}'); a = r.read('params-decoder-w'); "
            "print(a.dtype, a.shape, a.ravel().tolist()); print('jax' in sys.modules, 'orbax.checkpoint' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == f"float32 (3, 5) {w.ravel().tolist()}"
    assert out[1] == "False False"

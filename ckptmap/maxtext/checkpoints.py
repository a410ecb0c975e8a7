"""MaxText's own checkpoint code, called on one built model (runs where MaxText imports: the worker, Python >= 3.12).

The consumer side of a conversion: a checkpoint counts as loadable only when MaxText's own loaders read it.
- `load_with_training_loader`: `maxtext.common.checkpointing.load_params_from_path`, what training uses for
  `load_parameters_path` (Linen abstract params in, the restored tree out, flattened to MaxText's names).
- `logits_with_from_pretrained`: `maxtext.utils.model_creation_utils.from_pretrained`, what decode and serving
  use: it builds the NNX model, loads the checkpoint into it, and this runs that model's own forward pass.
- `save_like_maxtext`: MaxText's own conversion save (`save_weights_to_checkpoint`) of given arrays, so that a
  checkpoint written by MaxText itself can be converted back.
- `forward_from_checkpoint`: `load_params_from_path` onto the model's own mesh (each variable sharded by its
  logical axes over every device the mesh holds), then the model's forward pass with its activations, without the
  weights leaving the worker (`ckptmap check`: real weights at full size).
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

import numpy as np


def _nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *path, leaf = name.split("-")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _restore(model, path: str, *, sharded: bool):
    """`load_params_from_path(path, abstract params)` -> the restored tree. `sharded`: each variable placed by its
    logical axes on the model's mesh (MaxText's own partitioning); else replicated (one device holds it whole)."""
    import flax.linen as nn
    import jax
    from flax.linen import partitioning as nn_partitioning
    from maxtext.common import checkpointing
    from maxtext.utils import max_utils, maxtext_utils

    config = model.config
    with model.mesh, nn_partitioning.axis_rules(config.logical_axis_rules):
        boxed = maxtext_utils.get_abstract_param(model.model, config)
        abstract = max_utils.unbox_logicallypartioned(boxed)
        if sharded:
            shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), model.mesh,
                                                    config.logical_axis_rules)
            abstract = jax.tree_util.tree_map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        else:
            replicated = jax.sharding.NamedSharding(model.mesh, jax.sharding.PartitionSpec())
            abstract = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
        return checkpointing.load_params_from_path(
            path, abstract, config.checkpoint_storage_concurrent_gb, config.checkpoint_storage_use_ocdbt,
            config.checkpoint_storage_use_zarr3)


def _named(restored) -> dict:
    import jax
    from maxtext.checkpoint_conversion.utils.utils import param_key_parts_from_path

    flat = jax.tree_util.tree_flatten_with_path(restored)[0]
    return {"-".join(param_key_parts_from_path(p)): v for p, v in flat}


def load_with_training_loader(model, path: str) -> dict[str, np.ndarray]:
    """name -> array as `load_params_from_path(path, abstract params)` restores them."""
    # Orbax restores jax.Arrays onto a sharding; one CPU device holds every weight whole
    return {name: np.asarray(v) for name, v in _named(_restore(model, path, sharded=False)).items()}


def forward_from_checkpoint(model, path: str, tokens: np.ndarray) -> tuple[np.ndarray, dict, list[str]]:
    """(logits [batch, seq, vocab] float32, activations, notes) of the model with the weights
    `load_params_from_path(path)` restores onto its mesh, on `tokens` at positions 0..seq-1 (see
    MaxTextModel.forward). The weights stay jax.Arrays on the devices their sharding names."""
    return model.forward(_named(_restore(model, path, sharded=True)), tokens)


def logits_with_from_pretrained(model, path: str, tokens: np.ndarray) -> np.ndarray:
    """Logits [batch, seq, vocab] (float32) of the NNX model `from_pretrained` builds with
    `load_parameters_path=path`, on `tokens` at positions 0..seq-1."""
    import jax.numpy as jnp
    from flax.linen import partitioning as nn_partitioning
    from maxtext.configs import pyconfig
    from maxtext.utils import model_creation_utils

    config = pyconfig.initialize(["", f"model_name={model.model_name}", *model.overrides,
                                  f"load_parameters_path={path}"])
    built = model_creation_utils.from_pretrained(config)
    nnx_model, mesh = built if isinstance(built, tuple) else (built, model.mesh)
    toks = jnp.asarray(np.asarray(tokens), dtype=jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(toks.shape[1], dtype=jnp.int32)[None, :], toks.shape)
    with mesh, nn_partitioning.axis_rules(config.logical_axis_rules):
        out = nnx_model(toks, positions, enable_dropout=False)
    logits = out[0] if isinstance(out, tuple) else out
    return np.asarray(logits, dtype=np.float32)


def save_like_maxtext(model, path: str, params: dict[str, np.ndarray]) -> None:
    """Write `params` (MaxText names -> arrays) at `path` the way MaxText's own conversion saves a checkpoint."""
    from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint

    config = model.config
    save_weights_to_checkpoint(path, _nest(params), 1, config.checkpoint_storage_use_ocdbt,
                               config.checkpoint_storage_use_zarr3, config=config)

"""Orbax checkpoints as MaxText reads and writes them: one locator, one metadata reader, one array reader, one writer.

On disk (MaxText 0.2.5's `to_maxtext.py` -> `save_weights_to_checkpoint` -> Orbax v1 `save_checkpointables`):

    ROOT/<step>/_CHECKPOINT_METADATA
    ROOT/<step>/items/_METADATA, manifest.ocdbt, d/...     the "items" checkpointable: a train state
        {"step": 0, "params": {"params": {"decoder": ...}, "MoEBiasVar": {...}}, "opt_state": {...}}

`params` names the item and holds Flax collections (`params`, and others such as `MoEBiasVar`). ckptmap's flat names
are those collections' paths joined with `-` (`params-decoder-layers_0-mlp-wi_0-kernel`,
`MoEBiasVar-decoder-...`), the way MaxText's conversion names them. `load_parameters_path` is `ROOT/<step>/items`.

Readers accept ROOT (latest step, or `step=N`), a step directory, an `items` directory, and a bare PyTree
checkpoint (older ckptmap output: `{"params": {"decoder": ...}}`). Only the parameter collections are restored,
never the optimizer state.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from ckptmap.errors import CkptmapError

ITEM_NAME = "items"
# A train state's keys beside `params` (MaxText's TrainState): never parameters.
TRAIN_STATE_KEYS = ("step", "opt_state")


class OrbaxError(CkptmapError):
    """An Orbax checkpoint could not be found, read or written (names the directory and, where known, the tensor)."""


def import_orbax(path: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise OrbaxError("Orbax checkpoints need the orbax-checkpoint package", file=path) from None
    _quiet_absl()
    return ocp


def preload_orbax() -> None:
    """Start importing Orbax on a background thread (about 3 s on this project's VM, mostly JAX and ml_dtypes), so
    that the save that needs it a second later finds it loaded instead of holding the first tensors back. Only
    where no Ray process is forked later (ckptmap.pipeline.distributed.ray_runtime). An import that fails here
    fails again, with its error, in import_orbax."""
    def load() -> None:
        with contextlib.suppress(Exception):
            import orbax.checkpoint  # noqa: F401  # lazy: the preload itself

    threading.Thread(target=load, name="ckptmap-orbax-import", daemon=True).start()


def _quiet_absl() -> None:
    """Orbax logs through absl at WARNING for ordinary cases (a step dir without _CHECKPOINT_METADATA inside items/);
    a conversion prints its own errors, so absl is kept to ERROR unless the user set a verbosity."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    if absl_logging.get_verbosity() == absl_logging.WARNING:
        absl_logging.set_verbosity(absl_logging.ERROR)


# ----------------------------------------------------------------------------------------------------- locate

@dataclass(frozen=True)
class OrbaxLocation:
    """Where a checkpoint's parameter tree lives: `item_dir` holds `_METADATA`; `step` when it came from a step dir."""

    item_dir: str
    step: int | None = None


def numbered_steps(root: str) -> list[int]:
    """The step directories under a checkpoint root, ascending (`0`, `100`, ...)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def locate(path: str, step: int | None = None) -> OrbaxLocation:
    """The item directory of `path`: itself, its `items/`, or `<step>/items` under a root (latest step unless
    `step` is given). Raises OrbaxError naming the path and what was looked for."""
    if not os.path.isdir(path):
        raise OrbaxError("no such Orbax checkpoint directory", file=path)
    has_meta = lambda d: os.path.isfile(os.path.join(d, "_METADATA"))  # noqa: E731
    if step is None:
        if has_meta(path):
            return OrbaxLocation(path)
        if has_meta(os.path.join(path, ITEM_NAME)):
            base = os.path.basename(os.path.normpath(path))
            return OrbaxLocation(os.path.join(path, ITEM_NAME), int(base) if base.isdigit() else None)
    steps = numbered_steps(path)
    if step is not None:
        if step not in steps:
            shown = ", ".join(map(str, steps)) or "none"
            raise OrbaxError(f"no step {step} in this checkpoint (steps: {shown})", file=path)
        steps = [step]
    for s in reversed(steps):
        for candidate in (os.path.join(path, str(s), ITEM_NAME), os.path.join(path, str(s))):
            if has_meta(candidate):
                return OrbaxLocation(candidate, s)
    raise OrbaxError("no Orbax tree metadata (_METADATA) here, in items/, or in a numbered step directory",
                     file=path)


def is_orbax_dir(path: str) -> bool:
    """Whether `path` looks like any Orbax form `locate` accepts (no metadata is read)."""
    markers = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
    if any(os.path.exists(os.path.join(path, m)) for m in markers):
        return True
    if os.path.isfile(os.path.join(path, ITEM_NAME, "_METADATA")):
        return True
    return any(os.path.exists(os.path.join(path, str(s), m)) for s in numbered_steps(path)
               for m in ("_CHECKPOINT_METADATA", ITEM_NAME))


# ----------------------------------------------------------------------------------------------------- metadata

def _key_text(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (_key_text(k),))
    elif isinstance(node, (list, tuple)) and not hasattr(node, "shape"):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (str(i),))
    elif node is not None:
        yield path, node


def parameter_root(tree: dict) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """(path to the collections level, prefix for names below it, skipped top-level keys).

    A train state `{"step", "params": {"params": ..., "MoEBiasVar": ...}, "opt_state"}`: collections at
    ("params",), names start with the collection. A bare `{"params": {"decoder": ...}}`: collections at (),
    names `params-decoder-...`.
    """
    if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
        return (), (), []
    inner = tree["params"]
    skipped = sorted(str(k) for k in tree if k != "params")
    if isinstance(inner.get("params"), dict) or any(k in tree for k in TRAIN_STATE_KEYS):
        return ("params",), (), skipped
    return (), (), skipped


def _tree_metadata(item_dir: str, stored: StoredMetadata | None):
    """The stored tree with a `.shape`/`.dtype` leaf per array: read from `_METADATA` and the arrays' own Zarr
    metadata through TensorStore (no JAX, no Orbax) when `_METADATA` is in the JSON form Orbax writes, else
    through Orbax's own metadata call."""
    if stored is not None:
        return _tree_from_stores(item_dir, stored)
    ocp = import_orbax(item_dir)
    try:
        with _unawaited_quiet():
            metadata = ocp.PyTreeCheckpointer().metadata(os.path.abspath(item_dir))
    except Exception as e:  # orbax raises assorted errors for damaged checkpoints
        first_line = " ".join(str(e).split())[:300]
        raise OrbaxError(f"cannot read Orbax metadata: {type(e).__name__}: {first_line}", file=item_dir) from None
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
    return tree if tree is not None else getattr(metadata, "item_metadata", metadata)


# Orbax's `value_type`s of leaves stored as TensorStore arrays, and of leaves that are not arrays (the step); a
# `_METADATA` with any other type is left to Orbax's own metadata call, which knows its types.
ARRAY_VALUE_TYPES = ("jax.Array", "np.ndarray")
OTHER_VALUE_TYPES = ("scalar", "string")


@dataclass(frozen=True)
class StoredMetadata:
    """`_METADATA` as Orbax's PyTree handler writes it: each leaf's key path and value type, and the storage
    flags (None where the file does not say)."""

    leaves: dict[tuple[str, ...], str]
    use_ocdbt: bool | None
    use_zarr3: bool | None


def stored_metadata(item_dir: str) -> StoredMetadata | None:
    """`item_dir/_METADATA` parsed, or None when it is not the JSON tree form (`{"tree_metadata": {...}}`) this
    reads: Orbax then reads it, and reports what is wrong with it."""
    try:
        with open(os.path.join(item_dir, "_METADATA"), "rb") as f:
            doc = json.loads(f.read())
        entries = doc["tree_metadata"]
        leaves = {}
        for entry in entries.values():
            keys = tuple(str(k["key"]) for k in entry["key_metadata"])
            leaves[keys] = str(entry["value_metadata"]["value_type"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if any(v not in ARRAY_VALUE_TYPES + OTHER_VALUE_TYPES for v in leaves.values()):
        return None
    flag = lambda k: doc[k] if isinstance(doc.get(k), bool) else None  # noqa: E731
    return StoredMetadata(leaves, flag("use_ocdbt"), flag("use_zarr3"))


@dataclass(frozen=True)
class _StoredArray:
    shape: tuple[int, ...]
    dtype: str
    store: Any  # the opened TensorStore, kept for the reader


@dataclass(frozen=True)
class _Unopened:
    """A leaf `_METADATA` lists as an array that does not open (why: TensorStore's first line)."""

    why: str


def _tree_from_stores(item_dir: str, stored: StoredMetadata) -> dict:
    """The nested tree of `stored`'s leaves; each array's shape and dtype come from opening it (all opened side
    by side, every open awaited, so nothing is left running); an array that does not open is an `_Unopened`
    leaf, reported by `read_metadata` under its parameter name."""
    context, use_ocdbt = read_context(item_dir, stored)
    opening = {k: _start_open(item_dir, k, context, use_ocdbt, stored.use_zarr3)
               for k, v in stored.leaves.items() if v in ARRAY_VALUE_TYPES}
    tree: dict = {}
    for keys in stored.leaves:
        if not keys:
            raise OrbaxError("_METADATA lists a leaf with an empty key path", file=item_dir)
        leaf = None
        if keys in opening:
            store, why = _finish_open(opening[keys], item_dir, keys, context, use_ocdbt, stored.use_zarr3)
            leaf = _Unopened(why) if store is None else _StoredArray(tuple(int(d) for d in store.shape),
                                                                     store.dtype.name, store)
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise OrbaxError(f"_METADATA lists {k!r} as both a leaf and a subtree", file=item_dir,
                                 key="-".join(keys))
        if isinstance(node.get(keys[-1]), dict):
            raise OrbaxError(f"_METADATA lists {keys[-1]!r} as both a leaf and a subtree", file=item_dir,
                             key="-".join(keys))
        node[keys[-1]] = leaf
    return tree


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


@dataclass(frozen=True)
class OrbaxMetadata:
    """name -> (shape, dtype) of the parameters, plus where they sit in the stored tree."""

    location: OrbaxLocation
    entries: dict[str, tuple[tuple[int, ...], str]]
    root_path: tuple[str, ...]
    skipped: tuple[str, ...]
    # name -> the read-only TensorStore handle the metadata read opened (empty when Orbax read the metadata)
    stores: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _unawaited_quiet():
    """On damaged metadata Orbax leaves coroutines it never awaits; Python warns about each when it is collected,
    at whatever moment, and the warning would print beside ckptmap's own one-line error. Collect them here,
    with that one warning silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        try:
            yield
        finally:
            gc.collect()


def read_metadata(path: str, step: int | None = None) -> OrbaxMetadata:
    """The parameter names, shapes and dtypes of an Orbax checkpoint (metadata only: no array is read)."""
    loc = locate(path, step)
    tree = _tree_metadata(loc.item_dir, stored_metadata(loc.item_dir))
    root_path, prefix, skipped = parameter_root(tree)
    entries: dict[str, tuple[tuple[int, ...], str]] = {}
    stores: dict[str, Any] = {}
    unopened: list[tuple[str, _Unopened]] = []
    for leaf_path, leaf in _leaves(_subtree(tree, root_path)):
        name = "-".join(prefix + leaf_path)
        if isinstance(leaf, _Unopened):
            unopened.append((name, leaf))
            continue
        shape = getattr(leaf, "shape", None)
        if shape is None:
            continue
        entries[name] = (tuple(int(d) for d in shape), str(getattr(leaf, "dtype", "float32")))
        if isinstance(leaf, _StoredArray):
            stores[name] = leaf.store
    if unopened:
        name, leaf = unopened[0]
        more = f" ({len(unopened) - 1} more parameters fail so)" if len(unopened) > 1 else ""
        raise OrbaxError(f"_METADATA lists this array but it does not open: {leaf.why}{more}", file=loc.item_dir,
                         key=name)
    if not entries:
        raise OrbaxError("Orbax metadata lists no arrays", file=loc.item_dir)
    return OrbaxMetadata(loc, entries, root_path, tuple(skipped), stores)


def restore_parameters(meta: OrbaxMetadata, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The parameter arrays `names` (default: every one) as numpy (name -> array); the optimizer state and step
    are not restored."""
    ocp = import_orbax(meta.location.item_dir)
    wanted = list(meta.entries) if names is None else list(names)
    item = nest_names(wanted, meta.location.item_dir)
    for key in reversed(meta.root_path):
        item = {key: item}
    restore_args = _map_leaves(item, lambda _: ocp.RestoreArgs(restore_type=np.ndarray))
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.abspath(meta.location.item_dir),
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # orbax raises assorted errors for damaged data files
        first_line = " ".join(str(e).split())[:300]
        raise OrbaxError(f"cannot restore the Orbax arrays: {type(e).__name__}: {first_line}",
                         file=meta.location.item_dir) from None
    root = _subtree(restored, meta.root_path)
    out = {"-".join(p): np.asarray(a) for p, a in _leaves(root)}
    missing = [n for n in wanted if n not in out]
    if missing:
        raise OrbaxError("the metadata lists a tensor whose data was not restored", file=meta.location.item_dir,
                         key=missing[0])
    return out


# The TensorStore context for reading Orbax arrays: Orbax's own defaults (file I/O threads, a cache pool for the
# OCDBT B-tree nodes so that each array's lookup does not re-read them).
READ_CONTEXT = {"file_io_concurrency": {"limit": 128}, "cache_pool#ocdbt": {"total_bytes_limit": 100_000_000}}


def read_context(item_dir: str, stored: StoredMetadata | None = None):
    """One TensorStore context for reading a checkpoint's arrays, and whether the checkpoint is OCDBT (as
    `_METADATA` says, else as the files show)."""
    import tensorstore as ts

    use_ocdbt = stored.use_ocdbt if stored is not None and stored.use_ocdbt is not None else _is_ocdbt(item_dir)
    return ts.Context(READ_CONTEXT), use_ocdbt


def _is_ocdbt(item_dir: str) -> bool:
    try:
        return any(f == "manifest.ocdbt" or f.startswith("ocdbt.process_") for f in os.listdir(item_dir))
    except OSError:
        return False


def array_spec(item_dir: str, keys: tuple[str, ...], use_ocdbt: bool, zarr3: bool) -> dict:
    """The TensorStore spec of the stored array at key path `keys`: Orbax names it by the keys joined with `.`,
    inside the OCDBT database at `item_dir` or as a directory of its own."""
    item_dir = os.path.abspath(item_dir)
    relative = ".".join(keys)
    if use_ocdbt:
        kvstore = {"driver": "ocdbt", "base": {"driver": "file", "path": item_dir + "/"}, "path": relative,
                   "cache_pool": "cache_pool#ocdbt"}
    else:
        kvstore = {"driver": "file", "path": os.path.join(item_dir, relative)}
    return {"driver": "zarr3" if zarr3 else "zarr", "kvstore": kvstore, "recheck_cached_data": False,
            "recheck_cached_metadata": False}


def _zarr_versions(use_zarr3: bool | None) -> tuple[bool, ...]:
    return (use_zarr3,) if use_zarr3 is not None else (False, True)


def _open(item_dir: str, keys: tuple[str, ...], context, use_ocdbt: bool, zarr3: bool):
    """TensorStore's future of the opened array, or the exception when it refuses the spec outright."""
    import tensorstore as ts

    try:
        return ts.open(array_spec(item_dir, keys, use_ocdbt, zarr3), open=True, read=True, context=context)
    except Exception as e:  # noqa: BLE001 - reported by _finish_open
        return e


def _start_open(item_dir: str, keys: tuple[str, ...], context, use_ocdbt: bool, use_zarr3: bool | None):
    return _open(item_dir, keys, context, use_ocdbt, _zarr_versions(use_zarr3)[0])


def _finish_open(started, item_dir: str, keys: tuple[str, ...], context, use_ocdbt: bool,
                 use_zarr3: bool | None):
    """(store, None), or (None, why) when no Zarr version opens it (TensorStore's message, without its spec)."""
    why = ""
    for i, zarr3 in enumerate(_zarr_versions(use_zarr3)):
        if i:
            started = _open(item_dir, keys, context, use_ocdbt, zarr3)
        try:
            if isinstance(started, Exception):
                raise started
            return started.result(), None
        except Exception as e:  # noqa: BLE001 - missing or damaged Zarr metadata
            why = " ".join(str(e).split("[tensorstore_spec")[0].split())[:200]
    return None, why


def open_array(meta: OrbaxMetadata, name: str, context, use_ocdbt: bool):
    """A read-only TensorStore handle on the stored parameter `name` ('-'-joined) of a checkpoint whose metadata
    Orbax read (Zarr v2 or v3); None when it does not open (the caller restores through Orbax, which reports the
    damage)."""
    item_dir = meta.location.item_dir
    keys = meta.root_path + tuple(name.split("-"))
    store, _ = _finish_open(_start_open(item_dir, keys, context, use_ocdbt, None), item_dir, keys, context,
                            use_ocdbt, None)
    return store


def _map_leaves(tree: Any, fn) -> Any:
    if isinstance(tree, dict):
        return {k: _map_leaves(v, fn) for k, v in tree.items()}
    return fn(tree)


# ----------------------------------------------------------------------------------------------------- names

def nest_names(names: Iterable[str] | dict[str, str], file: str | None = None) -> dict:
    """'-'-joined MaxText names -> the nested dict of collections MaxText's variables have:
    `params-decoder-layers-mlp-wi_0-kernel` -> {"params": {"decoder": {"layers": {"mlp": {"wi_0": {"kernel": name}}}}}}.
    Leaves hold the original name, or for a dict {path name: leaf} its value."""
    leaves = names if isinstance(names, dict) else {n: n for n in names}
    tree: dict = {}
    for name, value in leaves.items():
        node = tree
        *path, leaf = name.split("-")
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OrbaxError(f"{part!r} is both a tensor and a subtree", file=file, key=name)
            node = child
        if leaf in node:
            raise OrbaxError(f"{leaf!r} is both a tensor and a subtree", file=file, key=name)
        node[leaf] = value
    return tree


PARAMS_COLLECTION = "params"


def stored_name(name: str, names: set[str] | frozenset[str]) -> str:
    """Where a variable of another Flax collection is stored: inside `params` (`MoEBiasVar-decoder-...-gate-bias`
    -> `params-decoder-...-gate-bias`), as MaxText's own DeepSeek conversion writes the router bias. MaxText's
    loaders look such a collection's leaves up in `params` (checkpointing._alias_legacy_collections), and its
    `from_pretrained` fails on a separate `MoEBiasVar` collection (measured: "Array has been deleted"). A name
    whose `params` twin also exists keeps its own collection."""
    collection, sep, rest = name.partition("-")
    if not sep or collection == PARAMS_COLLECTION:
        return name
    folded = f"{PARAMS_COLLECTION}-{rest}"
    return name if folded in names else folded


def stored_keys(name: str, names: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The key path of target `name` in the train state `train_state` saves: `params` (the item's collections),
    then its stored name's parts; Orbax names the array's directory by these keys joined with `.`."""
    return ("params",) + tuple(stored_name(name, names).split("-"))


def lookup(name: str, available) -> str | None:
    """The stored name holding variable `name`: itself, or for another collection its `params` twin (the reverse
    of `stored_name`); None when neither is there."""
    if name in available:
        return name
    collection, sep, rest = name.partition("-")
    if sep and collection != PARAMS_COLLECTION and f"{PARAMS_COLLECTION}-{rest}" in available:
        return f"{PARAMS_COLLECTION}-{rest}"
    return None


def train_state(collections: dict, step: int = 0) -> dict:
    """The item MaxText saves: `{"step": step, "params": collections}` (an empty optimizer state is not stored)."""
    return {"step": step, "params": collections}


def save_train_state(step_dir: str, collections: dict, *, step: int = 0, custom_metadata: dict | None = None) -> None:
    """Write `collections` (nested dict of arrays) as MaxText's train-state item at `step_dir` (a new directory):
    `step_dir/items/...` and `step_dir/_CHECKPOINT_METADATA`, through Orbax v1's `save_checkpointables`, the call
    MaxText's own conversion makes."""
    import_orbax(step_dir)
    from orbax.checkpoint import v1 as ocp_v1

    ocp_v1.save_checkpointables(os.path.abspath(step_dir), {ITEM_NAME: train_state(collections, step)},
                                custom_metadata=custom_metadata or {})


@dataclass(frozen=True)
class OrbaxWriteOptions:
    """How ckptmap stores an Orbax checkpoint it writes; every Orbax and MaxText loader reads each form.

    - `compression`: Orbax's zstd on every chunk, as MaxText's own conversion writes (smaller; CPU-bound).
    - `ocdbt`: the arrays inside OCDBT databases (`manifest.ocdbt`, `d/...`), Orbax's default and MaxText's own
      output. Off, each array is a zarr directory of chunk files (`items/<param path>/`), the form Orbax wrote
      before OCDBT: TensorStore writes it at the disk's speed (a 16 GB llama in 32.0 s against 31.8 s for the same
      chunks as plain files, 42.7 s through OCDBT; benchmarks/RESULTS.md), so it is the default.
    - `zarr3`: each array in Zarr v3 (`zarr.json`, chunks under `c/`), what Orbax's v1 API and so MaxText's own
      conversion write; off, Zarr v2 (`.zarray`). TensorStore encodes a v2 chunk element by element and a v3 chunk
      with one memcpy.
    """

    compression: bool = False
    ocdbt: bool = False
    zarr3: bool = True


def save_train_state_with(step_dir: str, collections: dict, *, step: int = 0, custom_metadata: dict | None = None,
                          leaf_type: type, handler, options: OrbaxWriteOptions = OrbaxWriteOptions(),
                          save_args: dict | None = None) -> None:
    """`save_train_state` for leaves of `leaf_type` written by `handler` (an Orbax TypeHandler): the same layout
    (`step_dir/items/...` and `step_dir/_CHECKPOINT_METADATA`), through Orbax's composite checkpointer, so that
    a handler can write each leaf as its data arrives, stored as `options` says. `save_args` (the collections'
    tree of Orbax SaveArgs, e.g. each array's chunking) defaults to Orbax's."""
    ocp = import_orbax(step_dir)
    from orbax.checkpoint._src.serialization import type_handler_registry as registry_lib

    registry = registry_lib.create_type_handler_registry(
        (leaf_type, handler), *[(t, h) for t, h in registry_lib._DEFAULT_TYPE_HANDLERS if t is not np.ndarray])
    items = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=options.compression,
                                        use_ocdbt=options.ocdbt, use_zarr3=options.zarr3)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(**{ITEM_NAME: items}))
    quiet = _quiet_errors()
    try:
        item = train_state(collections, step)
        args = None if save_args is None else train_state(save_args, ocp.SaveArgs())
        checkpointer.save(os.path.abspath(step_dir),
                          args=ocp.args.Composite(**{ITEM_NAME: ocp.args.PyTreeSave(item, save_args=args)}),
                          custom_metadata=custom_metadata or {})
    finally:
        checkpointer.close()
        quiet()


def _quiet_errors():
    """Keep Orbax from logging a failed write's traceback (the caller reports it as one line) while the absl
    verbosity is ckptmap's default; returns the function that restores it."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return lambda: None
    before = absl_logging.get_verbosity()
    if before != absl_logging.ERROR:  # the user chose a verbosity: leave it
        return lambda: None
    absl_logging.set_verbosity(absl_logging.FATAL)
    return lambda: absl_logging.set_verbosity(before)

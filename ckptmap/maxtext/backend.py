"""The MaxText side: build one MaxText model and describe, initialise, run and (for ground truth) convert into it.

Imports MaxText, so it runs only in a Python >= 3.12 env that has it: inside the worker process, or in-process
when the caller's own interpreter has MaxText. The model is built the way MaxText's checkpoint conversion builds
it (`transformer_as_linen`, then init / apply under the mesh and its logical axis rules), and parameter names are
joined the way that conversion joins them (`params-decoder-layers_0-self_attention-query-kernel`).
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

import time

import numpy as np

from ckptmap.maxtext import capture

# Config values reported with every tree (the fixtures' "maxtext_config_values" plus what a mapping needs).
CONFIG_KEYS = (
    "model_name", "decoder_block", "emb_dim", "num_query_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "moe_mlp_dim", "num_decoder_layers", "vocab_size", "num_experts", "num_experts_per_tok", "shared_experts",
    "first_num_dense_layers", "param_scan_axis", "scan_layers", "inhomogeneous_layer_cycle_interval",
    "share_kv_projections", "v_norm_with_scale", "use_multimodal", "logits_via_embedding", "attention_type",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "normalization_layer_epsilon",
    "rope_type", "rope_max_timescale", "rope_min_timescale", "final_logits_soft_cap", "normalize_embedding_logits",
    "use_qk_norm", "dtype", "weight_dtype", "sliding_window_size", "mtp_num_layers",
)


# Config values that change the function a model computes beyond its weights (RoPE, norms, soft-caps, windows,
# tied logits), for verify's config diff (ckptmap.verify.config_diff); `describe()["function_config"]`.
FUNCTION_KEYS = (
    "model_name", "decoder_block", "attention_type", "head_dim", "emb_dim", "base_emb_dim", "num_query_heads",
    "base_num_query_heads", "rope_type", "rope_use_scale", "rope_min_timescale", "rope_max_timescale",
    "local_rope_max_timescale", "global_rope_max_timescale", "global_rope_proportion", "local_rope_proportion",
    "rope_linear_scaling_factor", "rope_factor", "original_max_position_embeddings", "max_position_embeddings",
    "beta_fast", "beta_slow", "mscale", "rope_interleave", "rope_truncate", "rope_attention_scaling",
    "partial_rotary_factor", "use_mrope", "mrope_section", "qk_rope_head_dim", "compressed_rope_max_timescale",
    "normalization_layer_epsilon", "final_logits_soft_cap", "attn_logits_soft_cap", "sliding_window_size",
    "logits_via_embedding", "normalize_embedding_logits", "use_qk_norm", "use_multimodal", "use_indexer",
    "indexer_topk", "indexer_n_heads", "indexer_head_dim", "indexer_mask_exact_topk", "mlp_activations",
)


def _json_value(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def config_values(config, keys: tuple[str, ...] = CONFIG_KEYS) -> dict:
    """Selected MaxText config values as JSON scalars (enums and dtypes as their str(); lists of numbers kept)."""
    out = {}
    for key in keys:
        try:
            out[key] = _json_value(getattr(config, key))
        except (AttributeError, KeyError):
            continue
    return out


def check_positions(positions, shape: tuple[int, ...]) -> np.ndarray:
    """Position ids [batch, seq] as int32: 0..seq-1 in every row when None; ValueError when they do not fit."""
    if positions is None:
        return np.broadcast_to(np.arange(shape[1], dtype=np.int32)[None, :], shape).copy()
    positions = np.asarray(positions)
    if positions.shape != tuple(shape) or positions.dtype.kind not in "iu":
        raise ValueError(f"positions must be an integer array of the tokens' shape {tuple(shape)}, got "
                         f"{positions.dtype} {positions.shape}")
    if positions.size and int(positions.min()) < 0:
        raise ValueError("positions must be >= 0")
    return positions.astype(np.int32)


class MaxTextModel:
    """One MaxText model (model name + overrides), built once; every method is deterministic."""

    def __init__(self, model_name: str, overrides: list[str]):
        t_import = time.perf_counter()
        import jax
        import flax.linen as nn
        from maxtext.checkpoint_conversion.utils.utils import param_key_parts_from_path
        from maxtext.common.common_types import MODEL_MODE_TRAIN
        from maxtext.configs import pyconfig
        from maxtext.layers import quantizations
        from maxtext.models import models
        from maxtext.utils import maxtext_utils

        t0 = time.perf_counter()
        imports_s = t0 - t_import
        self.model_name = model_name
        self.overrides = list(overrides)
        self.config = pyconfig.initialize(["", f"model_name={model_name}", *self.overrides])
        self.mesh = jax.sharding.Mesh(maxtext_utils.create_device_mesh(self.config), self.config.mesh_axes)
        quant = quantizations.configure_quantization(self.config)
        self.model = models.transformer_as_linen(self.config, self.mesh, quant=quant, model_mode=MODEL_MODE_TRAIN)
        self.layer_classes = capture.install(self.config)
        t1 = time.perf_counter()
        abstract = maxtext_utils.get_abstract_param(self.model, self.config)
        flat, self._treedef = jax.tree_util.tree_flatten_with_path(
            abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        self.entries = []  # (name, shape, dtype, logical axes | None) in MaxText's flattening order
        for path, leaf in flat:
            value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
            axes = list(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else None
            name = "-".join(param_key_parts_from_path(path))
            self.entries.append((name, tuple(int(d) for d in value.shape), str(value.dtype), axes))
        self.index = {e[0]: i for i, e in enumerate(self.entries)}
        self.timings = {"imports_s": imports_s, "config_and_model_s": t1 - t0, "abstract_s": time.perf_counter() - t1}
        self._apply = None
        self._init = None
        self._layouts = None

    # ---- description ---------------------------------------------------------------------------------------
    def param_names(self) -> list[str]:
        """Every variable a checkpoint holds: `params-...` and the other collections MaxText's conversion also
        fills (e.g. deepseek3's router bias, `MoEBiasVar-...`)."""
        return [e[0] for e in self.entries]

    def describe(self) -> dict:
        """Variables of every collection init creates, their logical axes, and the config values."""
        params = [{"name": n, "shape": list(s), "dtype": d, "axes": a} for n, s, d, a in self.entries]
        return {"model_name": self.model_name, "overrides": self.overrides, "params": params,
                "config": config_values(self.config), "layer_classes": self.layer_classes,
                "function_config": config_values(self.config, FUNCTION_KEYS), "timings": dict(self.timings)}

    def fused_layouts(self) -> dict[str, dict]:
        """Fused-axis layouts read off the model's jaxpr (ckptmap.maxtext.code_layout), traced once."""
        if self._layouts is None:
            from ckptmap.maxtext.code_layout import model_fused_layouts

            self._layouts = model_fused_layouts(self)
        return {name: dict(layout, blocks=list(layout["blocks"])) for name, layout in self._layouts.items()}

    # ---- init ----------------------------------------------------------------------------------------------
    def _context(self):
        import contextlib

        from flax.linen import partitioning as nn_partitioning

        stack = contextlib.ExitStack()
        stack.enter_context(self.mesh)
        stack.enter_context(nn_partitioning.axis_rules(self.config.logical_axis_rules))
        return stack

    def _all_leaves(self, seed: int) -> dict[str, object]:
        """MaxText's own initialisation of every collection, name -> array, for one seed."""
        import jax
        import jax.numpy as jnp
        import flax.linen as nn
        from maxtext.checkpoint_conversion.utils.utils import param_key_parts_from_path

        if self._init is None:
            tokens = jnp.ones((1, 8), dtype=jnp.int32)
            positions = jnp.arange(8, dtype=jnp.int32)[None, :]

            def init_fn(key):
                # The NNX model creates every variable when it is constructed; `no_op` skips the forward pass
                # that a plain init would also trace and compile (minutes for scanned multimodal models).
                with self._context():
                    return self.model.init({"params": key, "dropout": key, "aqt": key}, tokens, positions,
                                           nnx_method="no_op")

            self._init = jax.jit(init_fn)
        t0 = time.perf_counter()
        variables = self._init(jax.random.PRNGKey(seed))
        flat = jax.tree_util.tree_flatten_with_path(
            variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
        out = {}
        for path, leaf in flat:
            name = "-".join(param_key_parts_from_path(path))
            value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
            if name not in self.index or tuple(value.shape) != self.entries[self.index[name]][1]:
                raise RuntimeError(f"MaxText init gave {name} {tuple(value.shape)}, which its abstract tree lacks")
            out[name] = value
        if len(out) != len(self.entries):
            missing = next(e[0] for e in self.entries if e[0] not in out)
            raise RuntimeError(f"MaxText init did not create {missing}")
        self.timings["init_s"] = time.perf_counter() - t0
        return out

    def init(self, seed: int = 0) -> dict[str, np.ndarray]:
        """MaxText's own random initialisation of every variable, name -> numpy array, in the tree's order."""
        leaves = self._all_leaves(seed)
        return {e[0]: np.asarray(leaves[e[0]]) for e in self.entries}

    # ---- forward -------------------------------------------------------------------------------------------
    def check_params(self, params: dict[str, np.ndarray]) -> None:
        """Raise KeyError / ValueError naming the first missing, unknown or misshapen parameter."""
        wanted = self.param_names()
        missing = [n for n in wanted if n not in params]
        if missing:
            raise KeyError(f"missing parameter {missing[0]!r} ({len(missing)} missing)")
        unknown = [n for n in params if n not in self.index]
        if unknown:
            raise KeyError(f"unknown parameter {unknown[0]!r} (not in the MaxText model)")
        for n in wanted:
            shape = self.entries[self.index[n]][1]
            if tuple(np.shape(params[n])) != shape:
                raise ValueError(f"parameter {n!r} has shape {tuple(np.shape(params[n]))}, the model expects {shape}")

    def _variables(self, params: dict[str, np.ndarray]):
        import jax
        import jax.numpy as jnp

        leaves = [jnp.asarray(params[name], dtype=dtype) for name, _, dtype, _ in self.entries]
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    def forward(self, params: dict[str, np.ndarray], tokens: np.ndarray,
                positions: np.ndarray | None = None) -> tuple[np.ndarray, dict, list[str]]:
        """Logits [batch, seq, vocab] (float32), activations (embed, layer_{i}, final_norm) and notes.

        `positions` [batch, seq] (ints): the position ids RoPE sees (e.g. strided, to reach long distances with
        few tokens); None: 0..seq-1 in every row. The attention masks follow the token order, not the position
        ids (MaxText's causal and sliding-window masks are built from indices). No segment ids; dropout off.
        """
        import jax
        import jax.numpy as jnp

        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be an integer array [batch, seq], got {tokens.dtype} {tokens.shape}")
        positions = check_positions(positions, tokens.shape)
        self.check_params(params)
        if self._apply is None:

            def apply_fn(variables, toks, pos):
                with self._context(), capture.capturing():
                    out, state = self.model.apply(variables, toks, pos, enable_dropout=False,
                                                  mutable=["intermediates"])
                logits = out[0] if isinstance(out, tuple) else out
                return logits, state.get("intermediates", {})

            self._apply = jax.jit(apply_fn)
        t0 = time.perf_counter()
        logits, intermediates = self._apply(self._variables(params), jnp.asarray(tokens, dtype=jnp.int32),
                                            jnp.asarray(positions, dtype=jnp.int32))
        logits = np.asarray(logits, dtype=np.float32)
        self.timings["forward_s"] = time.perf_counter() - t0
        calls, final_norm = capture.collect(intermediates)
        ordered, notes = capture.order_layer_calls(calls, int(self.config.num_decoder_layers))
        activations: dict[str, np.ndarray] = {}
        if ordered:
            activations["embed"] = np.asarray(ordered[0].inputs, dtype=np.float32)
        for i, call in enumerate(ordered):
            activations[f"layer_{i}"] = np.asarray(call.outputs, dtype=np.float32)
        if final_norm is not None:
            activations["final_norm"] = np.asarray(final_norm, dtype=np.float32)
        else:
            notes.append("final_norm: the decoder sowed no final-norm output")
        return logits, activations, notes

    # ---- ground truth --------------------------------------------------------------------------------------
    def reference_convert(self, hf_params: dict[str, np.ndarray], hf_config: dict) -> dict[str, np.ndarray]:
        """MaxText's own HF -> MaxText conversion (its PARAM_MAPPING / HOOK_FNS tables) of the given HF tensors.

        Ground truth for tests and acceptance only; the solver never sees it. `hf_config` is the HF config as a
        dict (the tiny one the tensors were made for).
        """
        from maxtext.checkpoint_conversion import to_maxtext
        from maxtext.checkpoint_conversion.utils.param_mapping import HOOK_FNS, PARAM_MAPPING

        key = self.model_name.replace("-Instruct", "")
        if key not in PARAM_MAPPING:
            raise KeyError(f"MaxText has no HF conversion table for {self.model_name!r}")
        scan = bool(self.config.scan_layers)
        param_map = PARAM_MAPPING[key](hf_config, self.config, scan)
        hook_map = HOOK_FNS[key](hf_config, self.config, scan, saving_to_hf=False)

        def getter(hf_key):
            if hf_key not in hf_params:
                raise KeyError(f"MaxText's mapping reads HF tensor {hf_key!r}, which was not given")
            return np.asarray(hf_params[hf_key], dtype=np.float32)

        out: dict[str, np.ndarray] = {}
        for mt_key, hf_keys in param_map.items():
            targets = mt_key if isinstance(mt_key, tuple) else (mt_key,)
            if not all(t in self.index for t in targets):
                continue  # tables cover several variants of a family; skip keys this model lacks
            shapes = [self.entries[self.index[t]][1] for t in targets]
            load = to_maxtext._get_hf_loading_function(
                hf_keys, getter, hook_map.get(mt_key), shapes if isinstance(mt_key, tuple) else shapes[0],
                self.config, mt_key)
            result = load()
            # A tuple key gets one tensor whose last axis holds the parts, as MaxText's own loader splits it
            # (to_maxtext._get_maxtext_weight: `final[..., i]`).
            values = ([np.asarray(result)[..., i] for i in range(len(targets))] if isinstance(mt_key, tuple)
                      else [result])
            for t, v in zip(targets, values):
                out[t] = np.asarray(v, dtype=np.float32)
        missing = [n for n in self.param_names() if n not in out]
        if missing:
            raise KeyError(f"MaxText's mapping for {self.model_name!r} leaves {missing[0]!r} unset")
        return out

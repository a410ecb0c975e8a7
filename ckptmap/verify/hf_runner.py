"""The HF/torch runner: a transformers causal LM built from a config (offline), float32, on CPU or CUDA.

`HFRunner(config, device)` builds the model once to learn its checkpoint names (the names `save_pretrained` writes,
e.g. per-expert `...experts.3.w1.weight` for Mixtral, not the fused in-memory ones); `forward(params, tokens)` loads
a params dict under those names through transformers' own loader (which applies its checkpoint conversions) and
returns logits [batch, seq, vocab] plus the shared activations (see ckptmap.runner.Forward):
`embed` = the input of block 0 (after any embedding scaling), `layer_{i}` = block i's output, `final_norm` = the
input of the LM head.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ckptmap.errors import CkptmapError
from ckptmap.runner import Forward
# the one HF model helper, shared with the tree reader and the code-layout tracer
from ckptmap.trees.hf_models import (_config_path, _text_config, causal_lm_config, checkpoint_names,  # noqa: F401
                                     config_value, declared_transposes, rename_into)


class VerifyError(CkptmapError):
    """A model could not be built or run for verification."""


_MULTIMODAL_LM_MAPPINGS = ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING", "MODEL_FOR_MULTIMODAL_LM_MAPPING")


def runner_model(config) -> tuple[Any, type, tuple[str, ...]]:
    """(the config to build, the model class verify's HF runner builds, the sub-config keys that lead from
    `config` to the built part: () when the runner builds `config` itself). In order:

    1. the text part's causal LM, where a composite has one (Gemma 3 / 4, Qwen3.5): verify's forward pass reads
       token ids only, so the vision or audio towers are not built (the gemma4 fixture's vision tower alone has
       570M parameters); their tensors are then absent from the runner and verify reports them as not checked;
    2. the config's own causal LM (a plain decoder);
    3. where neither exists (Qwen3-VL, Qwen3-Omni: the text decoder has no LM head class of its own), the model
       nearest the text config on the path down to it that transformers builds as an image-text or multimodal LM:
       Qwen3-VL's whole composite, Qwen3-Omni's thinker (not the talker and code2wav around it), run on text
       tokens only.
    """
    from transformers.models.auto import modeling_auto

    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING
    text = _text_config(config)
    path = _config_path(config, text)
    keys = tuple(k for k, _ in path[1:])
    if text is not config and causal.get(type(text), None) is not None:
        return text, causal[type(text)], keys or ("text_config",)
    if causal.get(type(config), None) is not None:
        return config, causal[type(config)], ()
    for depth in range(len(path) - 2, -1, -1) if len(path) > 1 else [0]:
        sub = path[depth][1] if path else config
        for name in _MULTIMODAL_LM_MAPPINGS:
            cls = getattr(modeling_auto, name).get(type(sub), None)
            if cls is not None:
                return sub, cls, keys[:depth]
    raise VerifyError(f"cannot build a causal LM for {config.model_type}: transformers has no causal-LM, "
                      f"image-text-to-text or multimodal-LM class for {type(config).__name__} or its text part "
                      f"{type(text).__name__}")


def _torch():
    import torch

    return torch


def select_device(device: str = "auto") -> str:
    """'cpu', 'gpu'/'cuda' or 'auto' -> a torch device string; 'gpu' without CUDA is an error."""
    torch = _torch()
    if device in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise VerifyError("--device gpu asked for, but torch sees no CUDA device")
        return "cuda"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def hf_config(spec: Any, *, file: str | None = None):
    """A transformers config from a config object, a dict with `model_type`, or a config.json path."""
    from transformers import CONFIG_MAPPING, PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        return spec
    if isinstance(spec, str):
        from ckptmap.trees.jsonio import load_json_strict

        file = spec
        spec = load_json_strict(spec, VerifyError)
    if isinstance(spec, dict) and not spec.get("model_type") and spec.get("architectures"):
        # a composite saved without its model_type (the qwen3-vl fixtures): the `hf:` reader's rule, by the class
        # named in `architectures`
        from ckptmap.errors import TreeError
        from ckptmap.trees.hf_config import build_config, reconcile

        try:
            return build_config(reconcile(dict(spec))[0], file or "")
        except TreeError as e:
            raise VerifyError(e.message, file=file, key=e.key) from None
    if not isinstance(spec, dict) or "model_type" not in spec:
        raise VerifyError("an HF config needs a \"model_type\"", file=file)
    d = dict(spec)
    model_type = d.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise VerifyError(f"unknown model_type {model_type!r}", file=file, key="model_type")
    try:
        return CONFIG_MAPPING[model_type](**d)
    except Exception as e:  # transformers raises several validation error types
        raise VerifyError(f"bad {model_type} config: {str(e).splitlines()[-1].strip()}", file=file) from None


BLOCK_LIST_NAMES = ("layers", "h", "blocks", "layer")


def _decoder_layers(model, n_layers: int):
    """The ModuleList of blocks: the shortest-named `layers` / `h` / `blocks` / `layer` (BERT's encoder) list of
    length n_layers outside vision or audio towers."""
    import torch.nn as nn

    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and name.split(".")[-1] in BLOCK_LIST_NAMES:
            if any(w in name for w in ("vision", "visual", "audio")):
                continue
            found.append((len(name), name, mod))
    if not found:
        raise VerifyError(f"no list of {n_layers} decoder layers in {type(model).__name__}")
    return sorted(found, key=lambda t: t[:2])[0][2]


def _other_values(a: np.ndarray) -> np.ndarray:
    """Different values of the same shape and scale: a seeded permutation plus a nudge (never equal anywhere)."""
    flat = a.reshape(-1).astype(np.float32)
    rng = np.random.default_rng([a.size, 17])
    spread = float(np.std(flat)) or 1.0
    return (flat[rng.permutation(flat.size)] + np.float32(0.5 * spread) + np.float32(0.1)).reshape(a.shape)


def _first_line(e: Exception, n: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[:n] + " ..."


def _first_tensor(x):
    if isinstance(x, (tuple, list)):
        return x[0]
    return x


LAYOUTS = ("saved", "memory")


class HFRunner:
    """A transformers model built once from `config` (float32, eager attention), run with many param dicts.

    On the CPU, torch runs single-threaded by default (`threads`; None leaves torch's setting alone).
    `layout`: the parameter names it takes, "saved" (what `save_pretrained` writes: per-expert MoE tensors, ...) or
    "memory" (the module's own `state_dict()` names: fused experts). A composite (multimodal) config runs the model
    `runner_model` picks: its text part's causal LM where there is one, else the nearest image-text / multimodal LM
    that holds the text decoder; a part runs under the names the composite model gives it
    (`model.language_model.layers.0...`, `thinker.model.layers.0...`). Tensors of towers the runner does not build
    are absent from `param_shapes`."""

    framework = "hf"

    def __init__(self, config: Any, device: str = "cpu", threads: int | None = 1, layout: str = "saved"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch = _torch()
        if layout not in LAYOUTS:
            raise VerifyError(f"unknown HF layout {layout!r}; expected one of {LAYOUTS}")
        self.layout = layout
        self.config = hf_config(config)
        self.text_config = _text_config(self.config)
        self.build_config, model_class, self.part = runner_model(self.config)
        self.text_part_only = bool(self.part)  # a part of a composite, run under the composite's names
        self.device = select_device(device)
        if threads and self.device == "cpu":
            # Tiny models: one thread is several times faster than contended intra-op parallelism.
            torch.set_num_threads(threads)
        if self.device == "cuda":  # float32 means float32: no TF32 matmuls
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        try:
            model = model_class._from_config(self.build_config, dtype=torch.float32, attn_implementation="eager")
        except Exception as e:  # transformers raises assertion, value and key errors alike
            raise VerifyError(f"cannot build {model_class.__name__} for {self.config.model_type}: "
                              f"{_first_line(e)}") from None
        self.model_class = type(model)
        self.n_layers = int(config_value(self.text_config, "num_hidden_layers"))
        self.vocab = int(config_value(self.text_config, "vocab_size"))
        shapes, aliases = self._checkpoint_names(model, layout)
        # Where checkpoint names are the module's own names, one model is reused and loaded in place;
        # otherwise (fused experts, renamed keys) transformers' loader converts on every load.
        module_state = model.state_dict()
        # integer tensors (index tables such as DeepSeek-V4's hash-routing `tid2eid` buffer): verify fills them
        # with valid indices, not random floats
        integer = {n: d for n, d in self._integer_names(model, layout).items() if n in shapes}
        self._in_place = all(n in module_state and tuple(module_state[n].shape) == v for n, v in shapes.items())
        self._model = model.to(self.device).eval() if self._in_place else None
        # external name (what param_shapes and forward speak) -> the built model's name
        self._internal = {n: n for n in shapes}
        if self.text_part_only:
            renamed = self._into_composite(sorted(set(shapes) | set(aliases)), layout)
            if renamed:
                self._internal = {renamed[n]: n for n in shapes}
                shapes = {renamed[n]: v for n, v in shapes.items()}
                aliases = {renamed[a]: renamed[c] for a, c in aliases.items()}
                integer = {renamed[n]: d for n, d in integer.items()}
        self._shapes, self.aliases = shapes, aliases
        self._integer = integer

    _checkpoint_names = staticmethod(checkpoint_names)

    @staticmethod
    def _integer_names(model, layout: str = "saved") -> dict[str, str]:
        """Checkpoint name -> dtype of the model's integer tensors (buffers such as `tid2eid`)."""
        from transformers.core_model_loading import revert_weight_conversion

        state = dict(model.state_dict())
        if layout == "saved":
            with declared_transposes():
                state = revert_weight_conversion(model, state)
        return {n: str(t.dtype).replace("torch.", "") for n, t in state.items()
                if hasattr(t, "is_floating_point") and not (t.is_floating_point() or t.is_complex())}

    def _composite_names(self, layout: str) -> set[str]:
        """The parameter names of the whole composite model (built once on the meta device: no weight memory), or
        an empty set when it cannot be built."""
        from ckptmap.errors import TreeError
        from ckptmap.trees.hf import build_meta_model

        cache = self.__dict__.setdefault("_composite_cache", {})
        if "meta" not in cache:
            try:
                cache["meta"] = build_meta_model(self.config, file="")
            except TreeError:
                cache["meta"] = None
        if cache["meta"] is None:
            return set()
        if layout not in cache:
            shapes, aliases = self._checkpoint_names(cache["meta"], layout)
            cache[layout] = set(shapes) | set(aliases)
        return cache[layout]

    def _into_composite(self, names: list[str], layout: str) -> dict[str, str] | None:
        """The built part's names -> the composite model's names for the same tensors (see `rename_into`). Where the
        composite itself cannot be built (the qwen3-omni fixture's talker config is incomplete), a part reached
        through sub-config keys other than the text config's runs under those keys, as transformers names the
        sub-model it builds from each (`thinker_config` -> `thinker.`)."""
        outer = self._composite_names(layout)
        if outer:
            return rename_into(names, outer)
        keys = [k[:-len("_config")] for k in self.part if k.endswith("_config") and k != "text_config"]
        if not keys or len(keys) != len(self.part):
            return None
        prefix = ".".join(keys) + "."
        return {n: prefix + n for n in names}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint name -> shape, tied duplicates left out (they are in `aliases`)."""
        return dict(self._shapes)

    def integer_params(self) -> dict[str, str]:
        """Name -> dtype of the integer tensors among `param_shapes` (index tables, e.g. `...gate.tid2eid`)."""
        return dict(self._integer)

    def dims(self) -> dict[str, int]:
        """Config numbers under ckptmap's canonical names (ARCHITECTURE.md, Dims). On a heterogeneous config
        (Gemma 4: head_dim, num_key_value_heads per layer) these are the config's global values; the per-layer
        ones that differ have their own names (`global_head_dim`, `global_kv_heads`)."""
        c = self.text_config
        heads = int(config_value(c, "num_attention_heads"))
        hidden = int(config_value(c, "hidden_size"))
        dims = {"hidden": hidden, "heads": heads, "layers": self.n_layers, "vocab": self.vocab,
                "kv_heads": int(config_value(c, "num_key_value_heads") or heads),
                "head_dim": int(config_value(c, "head_dim") or hidden // heads)}
        for canon, keys in (("mlp", ("intermediate_size",)), ("moe_mlp", ("moe_intermediate_size",)),
                            ("experts", ("num_local_experts", "n_routed_experts", "num_experts")),
                            ("q_lora_rank", ("q_lora_rank",)), ("kv_lora_rank", ("kv_lora_rank",)),
                            ("qk_nope_head_dim", ("qk_nope_head_dim",)), ("qk_rope_head_dim", ("qk_rope_head_dim",)),
                            ("v_head_dim", ("v_head_dim",)), ("query_pre_attn_scalar", ("query_pre_attn_scalar",)),
                            ("global_head_dim", ("global_head_dim",)),
                            ("global_kv_heads", ("num_global_key_value_heads",))):
            for k in keys:
                v = config_value(c, k)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v:
                    dims[canon] = int(v)
                    break
        return dims

    def _load(self, params: dict[str, np.ndarray]):
        torch = _torch()
        missing = sorted(set(self._shapes) - set(params))
        if missing:
            raise VerifyError(f"{len(missing)} parameters of the HF model were not given "
                              f"(first: {missing[0]})", key=missing[0])
        state = {}
        for name, shape in self._shapes.items():
            arr = np.asarray(params[name], dtype=np.int64 if name in self._integer else np.float32)
            if tuple(arr.shape) != shape:
                raise VerifyError(f"shape {tuple(arr.shape)}, the HF model expects {shape}", key=name)
            state[self._internal[name]] = torch.from_numpy(np.ascontiguousarray(arr))
        if self._model is not None:
            with torch.no_grad():
                self._model.load_state_dict(state, strict=False)
            return self._model
        with declared_transposes():
            model = self.model_class.from_pretrained(None, config=self.build_config, state_dict=state,
                                                     dtype=torch.float32, attn_implementation="eager")
        return model.to(self.device).eval()

    def module_params(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`params` as the built torch modules hold them after loading (the modules' own `state_dict()` names and
        layout: fused experts where the checkpoint has one tensor per expert), float32 numpy."""
        model = self._load(params)
        state = {n: t.detach().float().cpu().numpy() for n, t in model.state_dict().items()}
        if self.text_part_only:  # under the names the composite model gives its text part, as param_shapes
            renamed = self._into_composite(sorted(state), "memory")
            if renamed:
                state = {renamed[n]: v for n, v in state.items()}
        return state

    def forward(self, params: dict[str, np.ndarray], tokens: np.ndarray,
                positions: np.ndarray | None = None) -> Forward:
        """Load `params` (checkpoint names) and run `tokens` [batch, seq]: logits and activations as float32 numpy.
        `positions` [batch, seq]: the position ids RoPE sees (`position_ids`; the attention masks follow the token
        order); None: 0..seq-1."""
        torch = _torch()
        model = self._load(params)
        layers = _decoder_layers(model, self.n_layers)
        acts: dict[str, Any] = {}
        hooks = []

        def grab_input(name):
            def hook(_mod, args, kwargs):
                x = args[0] if args else kwargs.get("hidden_states")
                acts[name] = x.detach()
            return hook

        def grab_output(name):
            def hook(_mod, _args, out):
                acts[name] = _first_tensor(out).detach()
            return hook

        hooks.append(layers[0].register_forward_pre_hook(grab_input("embed"), with_kwargs=True))
        for i, layer in enumerate(layers):
            hooks.append(layer.register_forward_hook(grab_output(f"layer_{i}")))
        head = model.get_output_embeddings()
        if head is not None:
            hooks.append(head.register_forward_pre_hook(grab_input("final_norm"), with_kwargs=True))
        try:
            with torch.no_grad():
                out = model(**self._model_inputs(tokens, positions))
        finally:
            for h in hooks:
                h.remove()
        logits = out.logits.float().cpu().numpy()
        activations = {k: v.float().cpu().numpy() for k, v in acts.items()}
        return Forward(logits=logits, activations=activations)

    def _model_inputs(self, tokens: np.ndarray, positions=None) -> dict:
        """The keyword arguments of one forward call: token ids [batch, seq], and the position ids when given."""
        import torch

        ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self.device)
        inputs = {"input_ids": ids, "use_cache": False}
        if positions is not None:
            inputs["position_ids"] = torch.as_tensor(np.array(positions, dtype=np.int64), dtype=torch.long,
                                                     device=self.device)
            # an explicit all-ones mask: without one, transformers reads position ids that do not step by 1 as
            # packed sequences and masks across them
            inputs["attention_mask"] = torch.ones_like(ids)
        return inputs

    def unread_params(self, params: dict[str, np.ndarray], tokens: np.ndarray) -> set[str]:
        """Names (as `param_shapes` gives them) of the parameters the forward pass on `tokens` does not read (a
        vision or audio tower on a text-only pass); a tied parameter counts as read when any of its names is.

        Candidates are the parameters no gradient of the logits reaches (or only zeros); a parameter can still
        steer the output through a discrete choice a gradient does not see (DeepSeek-V3.2's sparse-attention
        indexer picks the top-k keys), so each candidate group is confirmed by giving it other values and running
        the forward pass again: the logits must not move at all. Groups are split along the name tree (`model`,
        `model.layers`, `model.layers.0`, ...) until the ones that do move them are set apart."""
        candidates = self._ungraded_params(params, tokens)
        if not candidates:
            return set()
        reference = self.forward(params, tokens).logits
        confirmed: set[str] = set()

        def moves(names: list[str]) -> bool:
            other = dict(params)
            for n in names:
                other[n] = _other_values(np.asarray(params[n]))
            return not np.array_equal(self.forward(other, tokens).logits, reference)

        def split(names: list[str], depth: int) -> None:
            if not moves(names):
                confirmed.update(names)
                return
            if len(names) == 1:
                return
            groups: dict[str, list[str]] = {}
            for n in names:
                groups.setdefault(".".join(n.split(".")[:depth + 1]), []).append(n)
            if len(groups) == 1 and depth + 1 >= max(len(n.split(".")) for n in names):
                groups = {n: [n] for n in names}
            for group in groups.values():
                split(group, depth + 1)

        split(sorted(candidates), 0)
        return confirmed

    def _ungraded_params(self, params: dict[str, np.ndarray], tokens: np.ndarray) -> set[str]:
        """The names whose gradient of (a random projection of) the logits is absent or zero."""
        torch = _torch()
        model = self._load(params)
        named = dict(model.named_parameters())
        flags = {n: p.requires_grad for n, p in named.items()}
        try:
            for p in named.values():
                p.grad = None
                p.requires_grad_(True)
            with torch.enable_grad():
                ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self.device)
                logits = model(input_ids=ids, use_cache=False).logits.float()
                # a seeded random direction: no read parameter's gradient cancels by symmetry, as a plain sum can
                gen = torch.Generator(device="cpu").manual_seed(0)
                direction = torch.randn(logits.shape, generator=gen).to(logits.device)
                (logits * direction).sum().backward()
            grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach() for n, p in named.items()}
        finally:
            for n, p in named.items():
                p.grad = None
                p.requires_grad_(flags[n])
        if not self._in_place:
            # the model was loaded through transformers' converting loader: its gradients, converted back the way
            # a checkpoint is saved, are named (and split) as the tensors this runner takes
            from transformers.core_model_loading import revert_weight_conversion

            with declared_transposes():
                grads = revert_weight_conversion(model, grads)
        unread = {n for n, g in grads.items() if not bool(torch.any(g != 0))}
        return {ext for ext, internal in self._internal.items() if internal in unread}

    def logits_float64(self, params: dict[str, np.ndarray], tokens: np.ndarray,
                       positions: np.ndarray | None = None) -> np.ndarray:
        """The logits [batch, seq, vocab] of the same model and inputs as `forward`, computed in float64 (a copy of
        the loaded model; fused-expert kernels that take no float64 run their eager loop): the exact function the
        float32 forward pass rounds, for measuring the model's own round-off."""
        import copy

        torch = _torch()
        model = copy.deepcopy(self._load(params)).double()
        if hasattr(model, "set_experts_implementation"):
            try:
                model.set_experts_implementation("eager")
            except (ValueError, AttributeError):
                pass
        with torch.no_grad():
            out = model(**self._model_inputs(tokens, positions))
        return out.logits.cpu().numpy().astype(np.float64)

    def close(self) -> None:
        pass

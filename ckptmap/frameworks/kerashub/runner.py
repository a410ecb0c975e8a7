"""The KerasHub runner for verify: a Keras model built once (float32 unless its config says otherwise), run with
each params dict assigned to its variables by path.

Each forward pass runs the model stateless (`stateless_call` on the given arrays, jitted on JAX): nothing is
assigned to the built variables.

What it compares (`Forward.logits`, [batch, seq, vocab]):
- a CausalLM: its logits, as `CausalLM.call` computes them from `token_ids` and a full `padding_mask`;
- a MaskedLM (BERT and the other encoders): the masked-LM logits at every position (`mask_positions` = 0..seq-1,
  `segment_ids` = 0), which is what HF's `...LMHeadModel` computes on an unmasked bidirectional pass: the
  encoder's last hidden states through the MLM head (dense, activation, layer norm, tied embedding, bias). A
  mapping that gets any encoder tensor or the head wrong moves these logits.
- a backbone alone: it has no vocabulary output, so it cannot be compared with a language model (an error).
Activations: `layer_{i}` = the output of block i, where the backbone's blocks are named `..._{i}` (one
numbered family of num_layers layers); `final_norm` = the backbone's sequence output.
"""

from __future__ import annotations

import os

import numpy as np

from ckptmap.errors import CkptmapError
from ckptmap.runner import Forward
from ckptmap.errors import TreeError
from ckptmap.frameworks.kerashub.models import build
from ckptmap.frameworks.kerashub.tree import tree_of


class KerasRunError(CkptmapError):
    """A KerasHub model could not be built or run for verification."""


def _numbered_blocks(backbone, n_layers: int) -> list:
    """The backbone's n_layers blocks: the one family of sublayers named PREFIX_0 .. PREFIX_{n-1}."""
    families: dict[str, dict[int, object]] = {}
    for layer in backbone.layers:
        prefix, _, index = layer.name.rpartition("_")
        if prefix and index.isdigit():
            families.setdefault(prefix, {})[int(index)] = layer
    hits = [f for f in families.values() if sorted(f) == list(range(n_layers))]
    return [hits[0][i] for i in range(n_layers)] if len(hits) == 1 else []


def model_inputs(net, tokens: np.ndarray, *, origin: str = "") -> dict[str, np.ndarray]:
    """A KerasHub model's input dict for token ids [batch, seq]: a full padding mask, segment 0, every position
    masked (a MaskedLM predicts all of them). An input it does not know how to fill is an error."""
    tokens = np.asarray(tokens, dtype=np.int32)
    batch, seq = tokens.shape
    fill = {"token_ids": tokens, "padding_mask": np.ones_like(tokens), "segment_ids": np.zeros_like(tokens),
            "mask_positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}
    keys = list(net.input.keys()) if isinstance(net.input, dict) else [t.name for t in net.inputs]
    unknown = [k for k in keys if k not in fill]
    if unknown:
        raise KerasRunError(f"{type(net).__name__} takes input {unknown[0]!r}, which verify cannot fill (it fills "
                            f"{', '.join(fill)})", file=origin or None)
    return {k: fill[k] for k in keys}


class KerasRunner:
    """A KerasHub model (ckptmap.frameworks.kerashub.models.KerasModel), built concretely once."""

    framework = "keras"
    aliases: dict[str, str] = {}

    def __init__(self, model, device: str = "cpu"):
        if device in ("cpu", "auto"):
            os.environ.setdefault("JAX_PLATFORMS", "cpu")

        if model.task_cls is None:
            raise KerasRunError(f"{model.backbone_cls.__name__} alone has no vocabulary output to compare; give its "
                                f"CausalLM or MaskedLM (a family name, or drop task=backbone)", file=model.origin)
        self.model = model
        self.device = device
        try:
            self.net = build(model, abstract=False)
        except TreeError as e:
            raise KerasRunError(e.message, file=e.file) from None
        self.tree = tree_of(model, self.net, model.origin)
        self.variables = {v.path: v for v in self.net.weights}
        self.masked = not model.task_cls.__name__.endswith("CausalLM")
        self.backbone = self.net.backbone
        self._probe = None
        self._calls: dict = {}
        self._unread: set[str] | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The variables verify must supply: all but those the compared output never reads (`unread`)."""
        unread = self.unread
        return {n: s for n, s in self.tree.shapes().items() if n not in unread}

    @property
    def unread(self) -> set[str]:
        """Variables the compared output does not depend on (a BERT MaskedLM's pooler, `pooled_dense`): their
        gradient is exactly zero on a seeded input. The forward pass keeps KerasHub's own init for them; a mapping
        need not produce them for verify (solve still reports them when it cannot map them)."""
        if self._unread is None:
            self._unread = self._find_unread()
        return self._unread

    def _find_unread(self) -> set[str]:
        import keras

        if keras.backend.backend() != "jax":
            return set()
        import jax
        import jax.numpy as jnp

        net = self.net
        inputs = self.inputs(np.random.default_rng(0).integers(0, int(self.vocab or 2), size=(1, 8)))
        frozen = [v.value for v in net.non_trainable_variables]

        def total(trainable):
            out = net.stateless_call(trainable, frozen, inputs, training=False)[0]
            return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

        grads = jax.grad(total)([v.value for v in net.trainable_variables])
        return {v.path for v, g in zip(net.trainable_variables, grads) if not np.any(np.asarray(g))}

    def dims(self) -> dict[str, int]:
        return dict(self.tree.meta.get("dims") or {})

    @property
    def vocab(self) -> int | None:
        return self.dims().get("vocab")

    def function_config(self) -> dict:
        """The backbone's constructor arguments (what the function depends on beyond the weights)."""
        return dict(self.tree.meta["model"]["config"])

    def integer_params(self) -> dict[str, str]:
        return {n: p.dtype for n, p in self.tree.params.items() if str(p.dtype).startswith(("int", "uint"))}

    def init_scales(self) -> dict[str, float]:
        """name -> std of KerasHub's own init of each matrix (its kernels are [in, ..., out])."""
        out = {}
        for name, v in self.variables.items():
            a = np.asarray(v.value)
            if a.ndim >= 2 and float(np.std(a)) > 0:
                out[name] = float(np.std(a))
        return out

    def inputs(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        return model_inputs(self.net, tokens, origin=self.model.origin)

    def _probe_model(self):
        """A functional view of the backbone giving `layer_{i}` and `final_norm`, or None where its blocks are not
        in its functional graph (then verify compares logits only)."""
        if self._probe is None:
            import keras

            blocks = _numbered_blocks(self.backbone, int(self.dims().get("layers") or 0))
            try:
                outs = {f"layer_{i}": b.output for i, b in enumerate(blocks)}
                outs = {k: (v[0] if isinstance(v, (tuple, list)) else v) for k, v in outs.items()}
                final = self.backbone.output
                if isinstance(final, dict):  # an encoder's {"sequence_output", "pooled_output"}
                    final = final.get("sequence_output")
                if final is not None:
                    outs["final_norm"] = final
                self._probe = keras.Model(self.backbone.input, outs)
            except Exception:  # noqa: BLE001 - see the docstring
                self._probe = False
        return self._probe or None

    def _compiled(self, net):
        """net's forward as a function of (trainable, non-trainable variable values, inputs): jitted on the JAX
        backend (one compile per sequence length), plain stateless_call elsewhere."""
        key = id(net)
        if key not in self._calls:
            def call(trainable, frozen, inputs):
                return net.stateless_call(trainable, frozen, inputs, training=False)[0]

            import keras

            if keras.backend.backend() == "jax":
                import jax

                call = jax.jit(call)
            self._calls[key] = call
        return self._calls[key]

    def _run(self, net, params: dict[str, np.ndarray], inputs: dict):
        trainable = [params[v.path].astype(v.dtype) for v in net.trainable_variables]
        # non-trainable state that is no weight (a dropout layer's seed) keeps its own value
        frozen = [params[v.path].astype(v.dtype) if v.path in params else v.value for v in net.non_trainable_variables]
        feed = {k: v for k, v in inputs.items() if k in net.input} if isinstance(net.input, dict) else inputs
        return self._compiled(net)(trainable, frozen, feed)

    def _check(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.variables if n not in params and n not in self.unread]
        if missing:
            raise KerasRunError(f"no value for this Keras variable ({len(missing)} missing)", key=missing[0])
        out = {}
        for name, v in self.variables.items():
            if name in self.unread and name not in params:
                out[name] = np.asarray(v.value)
                continue
            a = np.asarray(params[name])
            if tuple(a.shape) != tuple(v.shape):
                raise KerasRunError(f"shape {tuple(a.shape)}, the Keras variable is {tuple(v.shape)}", key=name)
            out[name] = a
        return out

    def forward(self, params: dict[str, np.ndarray], tokens: np.ndarray,
                positions: np.ndarray | None = None) -> Forward:
        """Logits [batch, seq, vocab] (see the module docstring) and activations; `positions` must be 0..seq-1
        (KerasHub's models take no position ids)."""
        if positions is not None and not np.array_equal(np.asarray(positions)[0], np.arange(np.shape(tokens)[1])):
            raise KerasRunError("KerasHub models take no position ids: verify can only run positions 0..seq-1")
        params = self._check(params)
        inputs = self.inputs(tokens)
        try:
            logits = np.asarray(self._run(self.net, params, inputs), dtype=np.float32)
            probe = self._probe_model()
            acts = {} if probe is None else {k: np.asarray(v, dtype=np.float32)
                                             for k, v in self._run(probe, params, inputs).items()}
        except CkptmapError:
            raise
        except Exception as e:  # noqa: BLE001 - keras raises many error types on bad shapes or configs
            raise KerasRunError(f"{self.model.class_name} forward pass failed: {type(e).__name__}: "
                                f"{' '.join(str(e).split())[:300]}", file=self.model.origin) from None
        return Forward(logits=logits, activations=acts)

    def close(self) -> None:
        self.variables.clear()

"""A framework's own spellings are declared by its adapter (Adapter.name_priors) and read by the name heuristics."""

from __future__ import annotations

from ckptmap import frameworks
from ckptmap.heuristics.names import WHOLE_TOKEN, concepts, framework_priors, name_similarity


def test_maxtext_and_keras_declare_their_own_spellings():
    maxtext = frameworks.for_prefix("maxtext").name_priors
    keras = frameworks.for_prefix("keras").name_priors
    assert maxtext["decoder_norm"] == ("final", "norm") and keras["reverse_embeddings"] == ("logits",)
    assert "decoder_norm" not in WHOLE_TOKEN  # a framework's convention lives with its adapter
    assert framework_priors()["reverse_embeddings"] == ("logits",)


def test_names_are_read_through_the_declared_priors():
    assert concepts("params-decoder-decoder_norm-scale") == ("final", "norm", "weight")
    assert name_similarity("lm_head.weight", "token_embedding/reverse_embeddings") > \
        name_similarity("model.embed_tokens.weight", "token_embedding/reverse_embeddings")

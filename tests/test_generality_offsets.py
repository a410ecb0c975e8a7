"""Position-table offsets are among the structural choices verify searches."""

from __future__ import annotations

import numpy as np

from ckptmap.mapping import Rule, Slot
from ckptmap.transforms import search_chains
from ckptmap.verify.candidates import offset_variants, structural_variants


def test_a_cut_table_may_drop_its_first_rows():
    chain = search_chains(((66, 8),), ((64, 8),), {})[0]  # RoBERTa-like: 2 padding rows in front of 64 positions
    table = np.arange(66 * 8, dtype=np.float32).reshape(66, 8)
    (as_cut,) = chain.apply((table,))
    np.testing.assert_array_equal(as_cut, table[:64])
    variants = offset_variants(chain)
    assert len(variants) == 1 and "first 2 rows" in variants[0][0]
    (shifted,) = variants[0][1].apply((table,))
    np.testing.assert_array_equal(shifted, table[2:])


def test_verify_offers_the_offset_for_a_rule():
    chain = search_chains(((66, 8),), ((64, 8),), {})[0]
    rule = Rule(sources=(Slot.single("embeddings.position_embeddings.weight"),),
                targets=(Slot.single("position_embedding/embeddings"),), chain=chain)
    labels = [label for label, _ in structural_variants(rule, [], [(64, 8)])]
    assert labels[0] == "as given" and any(label.startswith("offset: drop the first 2 rows") for label in labels)


def test_a_padded_table_may_gain_rows_in_front():
    chain = search_chains(((64, 8),), ((66, 8),), {})[0]
    (label, moved), = offset_variants(chain)
    (out,) = moved.apply((np.ones((64, 8), np.float32),))
    assert out.shape == (66, 8) and out[:2].sum() == 0 and out[2:].sum() == 64 * 8

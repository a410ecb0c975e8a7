"""Chain cost: a plain permutation of whole axes beats chains that regroup axes across their boundaries."""

from __future__ import annotations

from ckptmap.transforms import search_chains
from ckptmap.transforms.structural import Transpose


def test_conv3d_kernel_torch_to_flax_is_one_transpose():
    chains = search_chains(((32, 3, 2, 16, 16),), ((2, 16, 16, 3, 32),), {})
    assert chains[0].ops == (Transpose((2, 3, 4, 1, 0)),)
    assert chains[0].cost < chains[1].cost


def test_a_needed_split_is_not_penalised():
    """q_proj [heads*head_dim, hidden] -> [hidden, heads, head_dim] must cut one axis whichever way; the usual
    transpose-then-reshape stays first."""
    chains = search_chains(((64, 32),), ((32, 4, 16),), {"heads": 4, "head_dim": 16, "hidden": 32})
    assert chains[0].describe() == "transpose(1, 0) | reshape[32, 64]->[32, 4, 16]"


def test_a_two_row_table_is_never_padded_into_the_vocabulary():
    """BERT's token-type table [2, H] is no vocabulary table [V, H], even where dims name V."""
    assert search_chains(((2, 16),), ((256, 16),), {"vocab": 256}) == []
    assert search_chains(((256, 16),), ((320, 16),), {"vocab": 256})  # a real vocabulary padding stays

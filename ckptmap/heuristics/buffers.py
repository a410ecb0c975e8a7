"""Computed buffers: target tensors a model computes from its config, which no checkpoint needs to hold.

Rotary frequencies (`rotary_emb.inv_freq`, `freqs_cis`, cached cos / sin tables) and position-id ranges are
derived at load time; some checkpoints and frameworks still list them. A target of that kind that no source
explains is reported as a computed buffer, not as a failure to map. Read off the name's words and a reader's
"buffer" tag, never per model.
"""

from __future__ import annotations

from ckptmap.heuristics.names import split_subwords
from ckptmap.trees.model import name_tokens

# Words (or adjacent word pairs) that name a tensor computed from config numbers alone.
BUFFER_WORDS = frozenset({"inv_freq", "freqs_cis", "freqs", "cos_cached", "sin_cached", "position_ids",
                          "rope_cache", "cos_sin_cache"})


def is_computed_buffer(name: str, tags: tuple[str, ...] = ()) -> bool:
    """Whether target `name` (with its reader tags) is a buffer its model computes rather than loads."""
    if "buffer" in tags:
        return True
    for tok in name_tokens(name):
        low = tok.lower()
        words = split_subwords(low)
        pairs = {"_".join(words[k:k + 2]) for k in range(len(words) - 1)}
        if low in BUFFER_WORDS or pairs & BUFFER_WORDS:
            return True
    return False


def split_computed(tree, names: list[str]) -> tuple[list[str], list[str]]:
    """(still unmapped, computed buffers) among target `names` of `tree`."""
    computed = [n for n in names if is_computed_buffer(n, tuple(getattr(tree[n], "tags", ()) or ())) ]
    return [n for n in names if n not in computed], computed

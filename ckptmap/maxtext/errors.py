"""The one error the MaxText side raises to users."""

from __future__ import annotations

from ckptmap.errors import CkptmapError


class MaxTextError(CkptmapError):
    """MaxText is unavailable, rejected a config, or failed while building or running a model.

    `file` names the model spec (`maxtext:MODEL key=value ...`), `key` the parameter when one is at fault; the
    message carries MaxText's own message, squeezed onto one line.
    """


def one_line(text: str, limit: int = 600) -> str:
    """Squeeze a possibly multi-line (MaxText / pydantic) message onto one line of at most `limit` characters."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    flat = " | ".join(parts)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."

"""User-facing errors: each names the file (or spec) and the parameter, and says what was expected."""

from __future__ import annotations

import contextlib
from typing import Iterator


class CkptmapError(Exception):
    """An error the CLI prints as one line and exits 2 on; never a traceback."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.key:
            where.append(f"parameter {self.key!r}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class TreeError(CkptmapError):
    """A parameter tree could not be read."""


class MappingError(CkptmapError):
    """A mapping is malformed, or does not fit the trees it is applied to."""


class SolveError(CkptmapError):
    """The solver could not produce a complete mapping."""


@contextlib.contextmanager
def reading(path: str, error: type[CkptmapError], expected: str) -> Iterator[None]:
    """Inside the block, the OS's reasons `path` cannot be read become `error` naming it: no such file, a directory
    where `expected` (say "a JSON file") was wanted, or unreadable. Other errors pass through."""
    try:
        yield
    except FileNotFoundError:
        raise error("no such file", file=path) from None
    except IsADirectoryError:
        raise error(f"expected {expected}, found a directory", file=path) from None
    except OSError as e:
        raise error(f"cannot read: {e.strerror or e}", file=path) from None

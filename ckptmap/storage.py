"""Where checkpoint bytes live: a local path, or any fsspec URL (`gs://`, `s3://`, `memory://`, `file://`, ...).

The storage libraries do the talking (fsspec: gcsfs for gs://, s3fs for s3://; Orbax / TensorStore / etils epath for
Orbax on gs://); this module is the one place ckptmap asks them, so readers and writers need not know where a file
is. A plain path (or `file://`) stays on the local filesystem's own calls (memory maps, renames).

- reading: `exists`, `isdir`, `listdir`, `size`, `read_bytes(url, start, length)` (ranged: a safetensors header, one
  tensor's bytes), `open_read` (a seekable file object);
- writing: `atomic_write(url)` (a temp object beside it, moved into place once complete: on object stores an
  object appears whole or not at all), `upload_tree(local_dir, url)` (a directory written locally, uploaded under a
  temp prefix, then moved into place file by file, the files readers take as "complete" last: COMMIT_MARKERS);
- staging: `staged_input(url)` (a local copy for formats that need a local file: npz, Orbax) and
  `staged_output(url)` (a local path, uploaded on success; the staging directory is tempfile's, so `TMPDIR` picks
  the disk that holds it); `convert_at(convert_fn, ...)`: a conversion whose OUT is a URL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from ckptmap.atomic import atomic_path
from ckptmap.errors import CkptmapError

# schemes Orbax (through etils epath and TensorStore) opens itself: no staging
ORBAX_NATIVE_SCHEMES = ("gs",)
# files that say "this checkpoint is complete" (a safetensors index, Orbax's commit markers): uploaded last
COMMIT_MARKERS = ("model.safetensors.index.json", "commit_success.txt", "_CHECKPOINT_METADATA")
# the fsspec package each common remote scheme needs, for the error message
SCHEME_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs", "hf": "huggingface_hub"}


class StorageError(CkptmapError):
    """A remote location that cannot be reached, listed, read or written."""


def scheme(url: str) -> str:
    """"gs" for gs://b/x, "" for a plain path (and for Windows drive letters)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and len(head) > 1 and head.replace("+", "").isalnum() else ""


def is_remote(url: str) -> bool:
    """Whether `url` names a location outside the local filesystem's calls (any scheme but file://)."""
    return scheme(url) not in ("", "file")


def local_path(url: str) -> str:
    """A plain path for a local location (`file:///a/b` -> `/a/b`)."""
    return url[len("file://"):] if scheme(url) == "file" else url


def join(url: str, *parts: str) -> str:
    if not is_remote(url):
        return os.path.join(local_path(url), *parts)
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def dirname(url: str) -> str:
    if not is_remote(url):
        return os.path.dirname(local_path(url))
    head, _, rest = url.rstrip("/").partition("://")
    return f"{head}://{rest.rsplit('/', 1)[0]}" if "/" in rest else f"{head}://"


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str):
    """(fsspec filesystem, path inside it); StorageError naming the package a missing scheme needs."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        package = SCHEME_PACKAGES.get(scheme(url))
        hint = f" (install {package})" if package else ""
        raise StorageError(f"cannot open a {scheme(url)}:// location{hint}: {e}", file=url) from None


def _fail(e: Exception, url: str, what: str) -> StorageError:
    return StorageError(f"cannot {what}: {type(e).__name__}: {' '.join(str(e).split())[:200]}", file=url)


# --------------------------------------------------------------------------------------------------- reading

def exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def isdir(url: str) -> bool:
    if not is_remote(url):
        return os.path.isdir(local_path(url))
    fs, path = filesystem(url)
    return bool(fs.isdir(path))


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under the directory `url`, sorted."""
    if not is_remote(url):
        return sorted(os.listdir(local_path(url)))
    fs, path = filesystem(url)
    try:
        return sorted(basename(p) for p in fs.ls(path, detail=False))
    except OSError as e:
        raise _fail(e, url, "list it") from None


def size(url: str) -> int:
    if not is_remote(url):
        return os.path.getsize(local_path(url))
    fs, path = filesystem(url)
    try:
        return int(fs.size(path))
    except OSError as e:
        raise _fail(e, url, "read its size") from None


def read_bytes(url: str, start: int = 0, length: int | None = None) -> bytes:
    """`length` bytes from offset `start` (to the end when None): one ranged request on an object store."""
    if not is_remote(url):
        with open(local_path(url), "rb") as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path, start=start, end=None if length is None else start + length)
    except OSError as e:
        raise _fail(e, url, "read it") from None


def open_read(url: str):
    """A seekable binary file object (fsspec's block-cached file for remote URLs)."""
    if not is_remote(url):
        return open(local_path(url), "rb")
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb")
    except OSError as e:
        raise _fail(e, url, "open it") from None


# --------------------------------------------------------------------------------------------------- writing

def _temp_name(url: str) -> str:
    return join(dirname(url), f".tmp-{basename(url)}-{os.getpid()}")


@contextlib.contextmanager
def atomic_write(url: str) -> Iterator:
    """A binary file object to write `url` through: the bytes go to a temp object beside it, moved into place when
    the block ends without error (removed otherwise). Local paths use ckptmap.atomic (temp file, rename)."""
    if not is_remote(url):
        with atomic_path(local_path(url)) as tmp, open(tmp, "wb") as f:
            yield f
        return
    fs, path = filesystem(url)
    _, tmp = filesystem(_temp_name(url))
    try:
        with fs.open(tmp, "wb") as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def upload_tree(local_dir: str, url: str, *, overwrite: bool = False) -> None:
    """Upload the directory `local_dir` to `url`: every file under a temp prefix first, then moved into place, the
    COMMIT_MARKERS last (deepest first), so a reader that waits for them never sees a partial tree. An existing
    `url` is an error unless `overwrite`."""
    fs, path = filesystem(url)
    if fs.exists(path) and not overwrite:
        raise StorageError("already exists (use --force to replace it)", file=url)
    _, tmp = filesystem(_temp_name(url))
    files = sorted(os.path.relpath(os.path.join(d, f), local_dir) for d, _, names in os.walk(local_dir)
                   for f in names)
    markers = sorted((f for f in files if os.path.basename(f) in COMMIT_MARKERS), key=lambda f: -f.count(os.sep))
    files = [f for f in files if f not in markers] + markers
    try:
        for rel in files:
            fs.put_file(os.path.join(local_dir, rel), f"{tmp}/{rel.replace(os.sep, '/')}")
        if overwrite and fs.exists(path):
            fs.rm(path, recursive=True)
        for rel in files:
            fs.mv(f"{tmp}/{rel.replace(os.sep, '/')}", f"{path}/{rel.replace(os.sep, '/')}")
    except OSError as e:
        raise _fail(e, url, "upload it") from None
    finally:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)


def upload_file(local_file: str, url: str, *, overwrite: bool = False) -> None:
    """Upload one file to `url` through a temp object (atomic_write's protocol)."""
    if exists(url) and not overwrite:
        raise StorageError("already exists (use --force to replace it)", file=url)
    with open(local_file, "rb") as src, atomic_write(url) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)


def download_tree(url: str, local_dir: str) -> str:
    """Copy the file or directory `url` to `local_dir/<its name>`; returns that local path."""
    fs, path = filesystem(url)
    target = os.path.join(local_dir, basename(url))
    try:
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", target, recursive=True)
        else:
            fs.get_file(path, target)
    except OSError as e:
        raise _fail(e, url, "download it") from None
    return target


# --------------------------------------------------------------------------------------------------- staging

@contextlib.contextmanager
def staged_input(url: str) -> Iterator[str]:
    """A local path holding `url`'s content for the duration of the block (the path itself when local)."""
    if not is_remote(url):
        yield local_path(url)
        return
    with tempfile.TemporaryDirectory(prefix="ckptmap-in-") as d:
        yield download_tree(url, d)


@contextlib.contextmanager
def staged_output(url: str, *, overwrite: bool = False) -> Iterator[str]:
    """A local path to write `url`'s content at (the path itself when local); uploaded with upload_tree (or
    upload_file for a single file) when the block ends without error, discarded otherwise."""
    if not is_remote(url):
        yield local_path(url)
        return
    if exists(url) and not overwrite:
        raise StorageError("already exists (use --force to replace it)", file=url)
    with tempfile.TemporaryDirectory(prefix="ckptmap-out-") as d:
        local = os.path.join(d, basename(url))
        yield local
        if os.path.isdir(local):
            upload_tree(local, url, overwrite=overwrite)
        elif os.path.exists(local):
            upload_file(local, url, overwrite=overwrite)
        else:
            raise StorageError("nothing was written to upload", file=url)


def convert_at(convert_fn, mapping, input_path: str, output_path: str, *, force: bool = False, **options):
    """`convert_fn(mapping, input_path, output_path, force=, **options)` (ckptmap.convert.convert) with OUT (or
    `orbax:OUT`) at any URL: a remote OUT is written to a local staging path of the same name and uploaded when the
    conversion succeeds (upload_tree: nothing appears at OUT before every file is there); an existing remote OUT
    needs `force`. A remote IN is read by ckptmap.checkpoint_io's remote readers."""
    orbax = output_path.startswith("orbax:")
    bare = output_path[len("orbax:"):] if orbax else output_path
    prefix = "orbax:" if orbax else ""
    if not is_remote(bare):
        return convert_fn(mapping, input_path, prefix + local_path(bare), force=force, **options)
    with staged_output(bare, overwrite=force) as local:
        report = convert_fn(mapping, input_path, prefix + local, force=False, **options)
    if hasattr(report, "output"):  # the report names where the checkpoint is now, not the staging path
        report.output = output_path
    return report

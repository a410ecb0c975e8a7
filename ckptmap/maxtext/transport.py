"""Two ways to reach one built MaxText model, with the same four calls.

- `LocalBackend`: MaxText imports in this interpreter (a single Python >= 3.12 env): call it directly.
- `WorkerBackend`: a model built inside the shared worker process `<python> -m ckptmap.maxtext.worker` (the
  .venv-maxtext interpreter), started once and kept alive; JSON lines plus .npy files in a private temp directory.

Both offer `describe() -> dict`, `init(seed) -> {name: array}`, `forward(params, tokens) -> (logits,
activations, notes)`, `reference_convert(hf, hf_config) -> {name: array}`, `timings` and `close()`, and raise
MaxTextError carrying MaxText's own message.
"""

from __future__ import annotations

# lazy imports: MaxText, jax and flax exist only in the worker's venv (.venv-maxtext); the client side imports
# this package without them, and the worker's modules load each other only where they run.

import importlib.util
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ckptmap.maxtext import protocol
from ckptmap.maxtext.errors import MaxTextError, one_line

PYTHON_ENV_VAR = "CKPTMAP_MAXTEXT_PYTHON"
TRANSPORT_ENV_VAR = "CKPTMAP_MAXTEXT_TRANSPORT"  # "auto" (default), "inprocess" or "subprocess"
TIMEOUT_ENV_VAR = "CKPTMAP_MAXTEXT_TIMEOUT_S"  # longest wait for one worker answer (default 1800 s)
VENV_NAME = ".venv-maxtext"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def request_timeout_s() -> float:
    """Seconds to wait for one worker answer before stopping the worker ($CKPTMAP_MAXTEXT_TIMEOUT_S, 1800)."""
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV_VAR, "1800")))
    except ValueError:
        return 1800.0


def maxtext_in_process() -> bool:
    """True when this interpreter itself can import MaxText (Python >= 3.12 with maxtext installed)."""
    return sys.version_info >= (3, 12) and importlib.util.find_spec("maxtext") is not None


def worker_python() -> Path | None:
    """The interpreter that runs the worker: $CKPTMAP_MAXTEXT_PYTHON, else `.venv-maxtext/bin/python` next to this
    checkout (or under the current directory). None when none exists."""
    explicit = os.environ.get(PYTHON_ENV_VAR)
    if explicit:
        p = Path(explicit)
        return p if p.exists() else None
    for root in (_REPO_ROOT, Path.cwd()):
        p = root / VENV_NAME / "bin" / "python"
        if p.exists():
            return p
    return None


_worker_ok: dict[str, bool] = {}


def worker_python_has_maxtext(python: Path) -> bool:
    """Whether `python` can import maxtext (asked once per interpreter, a fraction of a second)."""
    key = str(python)
    if key not in _worker_ok:
        probe = "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('maxtext') else 1)"
        try:
            _worker_ok[key] = subprocess.run([key, "-c", probe], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            _worker_ok[key] = False
    return _worker_ok[key]


def choose_transport() -> str:
    """"inprocess" or "subprocess", honouring $CKPTMAP_MAXTEXT_TRANSPORT."""
    wanted = os.environ.get(TRANSPORT_ENV_VAR, "auto").strip().lower()
    if wanted in ("inprocess", "subprocess"):
        return wanted
    return "inprocess" if maxtext_in_process() else "subprocess"


def _squeeze(error: Exception) -> str:
    return one_line(f"{type(error).__name__}: {error}")


def _forward_answer(arrays: dict, result: dict) -> tuple:
    """(logits, activations by stage, notes) from the arrays a worker's forward wrote (`logits`, `act:<stage>`)."""
    logits = arrays.pop("logits")
    activations = {k[len("act:"):]: v for k, v in arrays.items() if k.startswith("act:")}
    return logits, activations, list(result.get("notes", []))


class LocalBackend:
    """MaxText in this process."""

    def __init__(self, model_name: str, overrides: tuple[str, ...], *, origin: str):
        self.origin = origin
        t0 = time.perf_counter()
        try:
            from ckptmap.maxtext.backend import MaxTextModel

            self.model = MaxTextModel(model_name, list(overrides))
        except Exception as e:  # noqa: BLE001 - MaxText raises anything; the user gets its message
            raise MaxTextError(f"MaxText could not build the model: {_squeeze(e)}", file=origin) from e
        self.start_s = time.perf_counter() - t0

    @property
    def timings(self) -> dict:
        return {"start_s": self.start_s, **self.model.timings}

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            raise MaxTextError(f"MaxText failed in {what}: {_squeeze(e)}", file=self.origin) from e

    def describe(self) -> dict:
        return self._guard("describe", self.model.describe)

    def init(self, seed: int) -> dict[str, np.ndarray]:
        return self._guard("init", self.model.init, seed)

    def forward(self, params, tokens, positions=None):
        if positions is None:
            return self._guard("forward", self.model.forward, params, tokens)
        return self._guard("forward", self.model.forward, params, tokens, positions)

    def fused_layouts(self) -> dict[str, dict]:
        return self._guard("fused_layouts", self.model.fused_layouts)

    def reference_convert(self, hf_params, hf_config):
        return self._guard("reference_convert", self.model.reference_convert, hf_params, hf_config)

    def load_checkpoint(self, path: str) -> dict[str, np.ndarray]:
        from ckptmap.maxtext import checkpoints

        return self._guard("load_params_from_path", checkpoints.load_with_training_loader, self.model, path)

    def from_pretrained_logits(self, path: str, tokens) -> np.ndarray:
        from ckptmap.maxtext import checkpoints

        return self._guard("from_pretrained", checkpoints.logits_with_from_pretrained, self.model, path, tokens)

    def checkpoint_forward(self, path: str, tokens):
        from ckptmap.maxtext import checkpoints

        return self._guard("load_params_from_path + forward", checkpoints.forward_from_checkpoint, self.model, path,
                           tokens)

    def save_checkpoint(self, path: str, params) -> None:
        from ckptmap.maxtext import checkpoints

        self._guard("save_weights_to_checkpoint", checkpoints.save_like_maxtext, self.model, path, params)

    @property
    def alive(self) -> bool:
        return self.model is not None

    def close(self) -> None:
        self.model = None


class WorkerProcess:
    """One kept-alive `python -m ckptmap.maxtext.worker`, hosting any number of built models.

    Imports (JAX, MaxText: most of a build's time) are paid once per process; each model is a cheap build inside
    it. Requests are serialised; arrays go through .npy files in the process's private temp directory.
    """

    def __init__(self, python: Path):
        self.python = python
        self.dir = Path(tempfile.mkdtemp(prefix="ckptmap-maxtext-"))
        self.log_path = self.dir / "worker.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self._lock = threading.Lock()
        self._scratch_count = 0
        self.builds = 0  # models built so far (the first one pays for the process start and imports)
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        # The worker runs this very checkout of ckptmap, whatever the worker venv has installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([str(python), "-m", "ckptmap.maxtext.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, cwd=str(self.dir), env=env,
                                     text=True, encoding="utf-8")
        self._pending = b""  # bytes read from the worker's stdout past the last full line

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return one_line("\n".join(text.splitlines()[-lines:]), limit=800)

    def call(self, op: str, *, origin: str, **fields) -> dict:
        """Send one request and wait for its answer; MaxTextError (with MaxText's message) on failure."""
        with self._lock:
            if not self.alive:
                raise MaxTextError(f"the MaxText worker died before {op} (code {self.proc.returncode}); log: "
                                   f"{self.log_tail()}", file=origin)
            try:
                protocol.send(self.proc.stdin, {"op": op, **fields})
                line = self._read_line(request_timeout_s())
            except TimeoutError:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise MaxTextError(f"the MaxText worker gave no answer to {op} within {request_timeout_s():.0f} s "
                                   f"(set {TIMEOUT_ENV_VAR}); it was stopped; log: {self.log_tail()}",
                                   file=origin) from None
            except (BrokenPipeError, OSError, ValueError):
                line = ""
            if not line:
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                raise MaxTextError(f"the MaxText worker died during {op} (code {self.proc.returncode}); log: "
                                   f"{self.log_tail()}", file=origin)
        message = protocol.decode(line)
        if not message.get("ok"):
            what = "could not build the model" if op == "build" else f"failed in {op}"
            detail = one_line(f"{message.get('type', 'Error')}: {message.get('error', '')}")
            raise MaxTextError(f"MaxText {what}: {detail}", file=origin)
        return message.get("result", {})

    def _read_line(self, timeout_s: float) -> str:
        """One protocol line from the worker ("" at end of file); TimeoutError after `timeout_s` of silence.

        Reads the pipe's file descriptor directly so that select() sees every byte (no hidden text buffer).
        """
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                line, self._pending = self._pending, b""
                return line.decode("utf-8", errors="replace")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8") + "\n"

    def scratch(self) -> Path:
        """A fresh directory for one request's arrays (the caller removes it)."""
        with self._lock:
            self._scratch_count += 1
            d = self.dir / f"call{self._scratch_count}"
        d.mkdir()
        return d

    def close(self) -> None:
        if self.alive:
            try:
                with self._lock:
                    protocol.send(self.proc.stdin, {"op": "shutdown"})
                    self._read_line(10.0)
                self.proc.wait(timeout=10)
            except (OSError, ValueError, TimeoutError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_workers: dict[str, WorkerProcess] = {}
_workers_lock = threading.Lock()


def shared_worker(python: Path) -> WorkerProcess:
    """The live worker process for this interpreter, started on first use (or after it died)."""
    with _workers_lock:
        worker = _workers.get(str(python))
        if worker is None or not worker.alive:
            if worker is not None:
                worker.close()
            worker = _workers[str(python)] = WorkerProcess(python)
        return worker


def close_workers() -> None:
    """Shut every worker process down (at interpreter exit)."""
    with _workers_lock:
        workers = list(_workers.values())
        _workers.clear()
    for worker in workers:
        worker.close()


class WorkerBackend:
    """One model built inside the shared worker process."""

    def __init__(self, model_name: str, overrides: tuple[str, ...], *, origin: str, python: Path | None = None):
        self.origin = origin
        python = python or worker_python()
        if python is None or not worker_python_has_maxtext(python):
            where = os.environ.get(PYTHON_ENV_VAR) or str(_REPO_ROOT / VENV_NAME / "bin" / "python")
            raise MaxTextError(
                f"the MaxText worker needs a Python >= 3.12 with maxtext installed; {where} is missing or cannot "
                f"import maxtext (run `make setup`, or set {PYTHON_ENV_VAR})", file=origin)
        self.worker = shared_worker(python)
        fresh = self.worker.builds == 0
        t0 = time.perf_counter()
        built = self.worker.call("build", origin=origin, model_name=model_name, overrides=list(overrides))
        self.worker.builds += 1
        self.model_id = built["model"]
        # A first build in a fresh process includes the process start and JAX / MaxText imports.
        start_s = time.perf_counter() - (self.worker.started if fresh else t0)
        self._timings = {"start_s": start_s, "worker_reused": not fresh, **built.get("timings", {})}

    @property
    def timings(self) -> dict:
        return dict(self._timings)

    @property
    def alive(self) -> bool:
        return self.worker.alive

    def _call(self, op: str, **fields) -> dict:
        result = self.worker.call(op, origin=self.origin, model=self.model_id, **fields)
        if "timings" in result:
            self._timings.update(result["timings"])
        return result

    def describe(self) -> dict:
        return self._call("describe")

    def _arrays(self, op: str, **fields) -> dict[str, np.ndarray]:
        """Call `op` with a scratch `out_dir` and return the arrays the worker wrote there."""
        d = self.worker.scratch()
        try:
            result = self._call(op, out_dir=str(d / "out"), **fields)
            return protocol.load_arrays(result["arrays"], d / "out")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def init(self, seed: int) -> dict[str, np.ndarray]:
        return self._arrays("init", seed=int(seed))

    def forward(self, params, tokens, positions=None):
        d = self.worker.scratch()
        try:
            manifest = protocol.save_arrays(params, d / "in")
            token_file = protocol.save_arrays({"tokens": np.asarray(tokens)}, d / "tok")["tokens"]
            extra = {}
            if positions is not None:  # optional field: requests without it are the protocol's older form
                pos_file = protocol.save_arrays({"positions": np.asarray(positions)}, d / "pos")["positions"]
                extra["positions"] = str(d / "pos" / pos_file)
            result = self._call("forward", in_dir=str(d / "in"), params=manifest,
                                tokens=str(d / "tok" / token_file), out_dir=str(d / "out"), **extra)
            arrays = protocol.load_arrays(result["arrays"], d / "out")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return _forward_answer(arrays, result)

    def fused_layouts(self) -> dict[str, dict]:
        return self._call("fused_layouts")["layouts"]

    def reference_convert(self, hf_params, hf_config):
        d = self.worker.scratch()
        try:
            manifest = protocol.save_arrays(hf_params, d / "in")
            result = self._call("reference_convert", in_dir=str(d / "in"), hf=manifest, hf_config=hf_config,
                                out_dir=str(d / "out"))
            return protocol.load_arrays(result["arrays"], d / "out")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def load_checkpoint(self, path: str) -> dict[str, np.ndarray]:
        return self._arrays("load_checkpoint", path=str(path))

    def from_pretrained_logits(self, path: str, tokens) -> np.ndarray:
        d = self.worker.scratch()
        try:
            token_file = protocol.save_arrays({"tokens": np.asarray(tokens)}, d / "tok")["tokens"]
            result = self._call("from_pretrained_logits", path=str(path), tokens=str(d / "tok" / token_file),
                                out_dir=str(d / "out"))
            return protocol.load_arrays(result["arrays"], d / "out")["logits"]
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def checkpoint_forward(self, path: str, tokens):
        d = self.worker.scratch()
        try:
            token_file = protocol.save_arrays({"tokens": np.asarray(tokens)}, d / "tok")["tokens"]
            result = self._call("checkpoint_forward", path=str(path), tokens=str(d / "tok" / token_file),
                                out_dir=str(d / "out"))
            arrays = protocol.load_arrays(result["arrays"], d / "out")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return _forward_answer(arrays, result)

    def save_checkpoint(self, path: str, params) -> None:
        d = self.worker.scratch()
        try:
            manifest = protocol.save_arrays(params, d / "in")
            self._call("save_checkpoint", path=str(path), in_dir=str(d / "in"), params=manifest)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Drop this model from the worker (the process stays up for other models)."""
        if self.worker.alive:
            try:
                self.worker.call("drop", origin=self.origin, model=self.model_id)
            except MaxTextError:
                pass

"""The real (full-size) configs of a MaxText model: MaxText's model yml and the HF config MaxText's checkpoint
conversion pairs with it (`checkpoint_conversion/utils/hf_model_configs.py`). Read as data in the MaxText venv.

`real_configs(model_name) -> {"model_name": ..., "maxtext": {key: value}, "hf": {...config dict...}}`; the name may
also be a bundled fixture family (`qwen3.5`) or a prefix that names one MaxText model (see `model_key`).
In-process when MaxText imports here (Python 3.12 env with maxtext), otherwise by running this module in
`.venv-maxtext`.
Run as a script (`python -m ckptmap.verify.real_configs MODEL`) it prints that JSON.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import subprocess
import sys

from ckptmap import bundled
from ckptmap.errors import CkptmapError


class ConfigError(CkptmapError):
    """A model's real configs could not be read."""


def maxtext_python() -> str | None:
    """The interpreter of the MaxText venv: $CKPTMAP_MAXTEXT_PYTHON, else <repo>/.venv-maxtext/bin/python."""
    env = os.environ.get("CKPTMAP_MAXTEXT_PYTHON")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    path = os.path.join(repo, ".venv-maxtext", "bin", "python")
    return path if os.path.exists(path) else None


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def resolve_model_name(name: str) -> str:
    """A bundled fixture family (`qwen3.5`, `llama3.1`) -> the MaxText model name it was made from
    (`qwen3.5-35b-a3b`); any other name is returned unchanged (MaxText's own names pass through)."""
    try:
        return bundled.find(name).maxtext_model_name
    except (CkptmapError, OSError, ValueError, KeyError):
        return name


def model_key(name: str, known: list[str]) -> str:
    """The key of `known` (MaxText's names with an HF config and a model yml) that `name` means: itself, the
    MaxText model of a bundled family, or the one key that starts with `name-`. ConfigError naming the
    candidates when there is none or more than one."""
    if name in known:
        return name
    resolved = resolve_model_name(name)
    if resolved in known:
        return resolved
    prefixed = sorted(k for k in known if k.startswith(name + "-"))
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise ConfigError(f"{name!r} names several MaxText models with an HF config: {', '.join(prefixed)}; "
                          "give one", key=name)
    raise ConfigError(f"MaxText has no HF config for {name!r}", key=name)


def _read_in_process(model_name: str) -> dict:
    import yaml  # MaxText's venv has it
    from maxtext.checkpoint_conversion.utils.hf_model_configs import HF_MODEL_CONFIGS

    models = importlib.resources.files("maxtext") / "configs" / "models"
    known = [k for k in HF_MODEL_CONFIGS if (models / f"{k}.yml").is_file()]
    if model_name not in known and model_name in HF_MODEL_CONFIGS:
        raise ConfigError(f"MaxText has no model yml for {model_name!r}", key=model_name)
    key = model_key(model_name, known)
    return {"model_name": key,
            "maxtext": _json_safe(yaml.safe_load((models / f"{key}.yml").read_text()) or {}),
            "hf": _json_safe(HF_MODEL_CONFIGS[key].to_dict())}


def last_line_in_maxtext_venv(args: list[str], what: str, *, key: str | None = None, timeout: float = 300) -> str:
    """Run `python -m ARGS` in the MaxText venv (offline, CPU) and return the last line it printed (a JSON
    answer). Raises ConfigError "{what} needs the MaxText venv" when there is none, "{what} failed: <last stderr
    line>" when it fails (the whole stderr on the error's `stderr`)."""
    python = maxtext_python()
    if python is None:
        raise ConfigError(f"{what} needs the MaxText venv (.venv-maxtext); none found", key=key)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([python, "-m", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        error = ConfigError(f"{what} failed: {last}", key=key)
        error.stderr = proc.stderr
        raise error
    return proc.stdout.strip().splitlines()[-1]


@functools.lru_cache(maxsize=64)
def _real_configs_json(model_name: str) -> str:
    try:
        import maxtext  # noqa: F401
        return json.dumps(_read_in_process(model_name))
    except ImportError:
        pass
    return last_line_in_maxtext_venv(["ckptmap.verify.real_configs", model_name], "reading MaxText's configs",
                                     key=model_name)


def real_configs(model_name: str) -> dict:
    """{"model_name": MaxText's name for `model_name` (see model_key), "maxtext": the model yml as a dict, "hf":
    the paired HF config as a dict} (fresh copies)."""
    return json.loads(_real_configs_json(model_name))


def main(argv: list[str]) -> int:
    try:
        print(json.dumps(_read_in_process(argv[0])))
    except CkptmapError as e:
        print(e.one_line(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

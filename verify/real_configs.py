"""The real (full-size) configs of a MaxText model: MaxText's model yml and the HF config MaxText's checkpoint
conversion pairs with it (`checkpoint_conversion/utils/hf_model_configs.py`). Read as data in the MaxText venv.

`real_configs(model_name) -> {"maxtext": {key: value}, "hf": {...config dict...}}`. In-process when MaxText
imports here (Python 3.12 env with maxtext), otherwise by running this module in `.venv-maxtext`.
Run as a script (`python -m ckptmap.verify.real_configs MODEL`) it prints that JSON.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

from ckptmap.errors import CkptmapError


class ConfigError(CkptmapError):
    """A model's real configs could not be read."""


def maxtext_python() -> str | None:
    """The interpreter of the MaxText venv: $CKPTMAP_MAXTEXT_PYTHON, else <repo>/.venv-maxtext/bin/python."""
    env = os.environ.get("CKPTMAP_MAXTEXT_PYTHON")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _read_in_process(model_name: str) -> dict:
    import importlib.resources

    import yaml  # MaxText's venv has it
    from maxtext.checkpoint_conversion.utils.hf_model_configs import HF_MODEL_CONFIGS

    if model_name not in HF_MODEL_CONFIGS:
        raise ConfigError(f"MaxText has no HF config for {model_name!r}", key=model_name)
    yml = importlib.resources.files("maxtext") / "configs" / "models" / f"{model_name}.yml"
    if not yml.is_file():
        raise ConfigError(f"MaxText has no model yml for {model_name!r}", key=model_name)
    return {"maxtext": _json_safe(yaml.safe_load(yml.read_text()) or {}),
            "hf": _json_safe(HF_MODEL_CONFIGS[model_name].to_dict())}


@functools.lru_cache(maxsize=64)
def _real_configs_json(model_name: str) -> str:
    try:
        import maxtext  # noqa: F401
        return json.dumps(_read_in_process(model_name))
    except ImportError:
        pass
    python = maxtext_python()
    if python is None:
        raise ConfigError("reading MaxText's configs needs the MaxText venv (.venv-maxtext); none found",
                          key=model_name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([python, "-m", "ckptmap.verify.real_configs", model_name], capture_output=True,
                          text=True, env=env, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"reading MaxText's configs failed: {last}", key=model_name)
    return proc.stdout.strip().splitlines()[-1]


def real_configs(model_name: str) -> dict:
    """{"maxtext": the model yml as a dict, "hf": the paired HF config as a dict} (fresh copies)."""
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

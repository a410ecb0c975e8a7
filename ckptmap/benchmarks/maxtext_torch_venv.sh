#!/bin/sh
# A throwaway Python 3.12 venv in which MaxText's own to_maxtext.py runs (for convert_speed's comparison; not CI):
# the repo's .venv-maxtext (MaxText 0.2.5, made by `make maxtext-venv`) seen through a .pth file, plus torch, which
# to_maxtext needs (safe_open(framework="pt")) and .venv-maxtext lacks. For Python 3.12 PyPI has only the CUDA
# build of torch; with its nvidia-* wheels installed it imports and runs on a CPU-only host (~4 GB of wheels,
# ~5.3 GB venv). Neither .venv nor .venv-maxtext is changed: pip installs only what is missing into the new venv.
#
#   sh ckptmap/benchmarks/maxtext_torch_venv.sh [VENV]          # default /work/venv-mt-torch
#   .venv/bin/python -m ckptmap.benchmarks.convert_speed --size tiny --maxtext-python VENV/bin/python
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${1:-/work/venv-mt-torch}
mt="$repo/.venv-maxtext"
# the first Python 3.12 that runs (a pyenv shim on PATH may not)
py=
for c in ${PYTHON312:-} "$mt/bin/python" python3.12 /root/.pyenv/versions/3.12.1/bin/python3.12; do
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py=$c; break; fi
done
[ -n "$py" ] || { echo "no Python 3.12 found (set PYTHON312)" >&2; exit 2; }
[ -x "$mt/bin/python" ] || { echo "no $mt: run 'make maxtext-venv' first" >&2; exit 2; }
site=$("$mt/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -m venv "$venv"
own=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir (not a bare path) so .venv-maxtext's own .pth files (ckptmap's editable install) are read too; the
# new venv's site-packages stay first on sys.path, so torch's dependencies installed here win
echo "import site; site.addsitedir('$site')" > "$own/zz_maxtext_venv.pth"
"$venv/bin/pip" install --no-cache-dir torch
"$venv/bin/python" -c 'import torch, maxtext.checkpoint_conversion.to_maxtext as t; assert t.torch is not None; print("torch", torch.__version__, "ok")'

#!/usr/bin/env bash
# Creates .venv and installs the project with its dev tools. Idempotent: re-runs only when pyproject.toml or the
# set of package files changed (the strict editable install links each file, so a new module needs a re-install).
# CPU machines get the CPU build of torch (installed first, so nothing pulls the CUDA build); GPU boxes get CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.framework-installed
# dockerfiles/constraints.txt: the versions CI tests and the image installs (scripts/freeze-constraints.sh).
constraints=dockerfiles/constraints.txt
want=$({ cat pyproject.toml "$constraints"; find framework recipes launchers conf -type f -not -path '*/__pycache__/*' | LC_ALL=C sort; } | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
.venv/bin/pip install -q -c "$constraints" --upgrade pip setuptools >/dev/null 2>&1 || true  # pinned, as in the image
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q -c "$constraints" "torch>=2.4"   # the CUDA build of the pinned version
  else
    .venv/bin/pip install -q "torch==2.13.0"   # the CPU wheel; an unpinned torch pulls GBs of CUDA packages
  fi
fi
# strict editable mode: Hydra's plugin scan cannot see namespace plugins through the default editable finder.
if ! .venv/bin/pip install -q -c "$constraints" -e '.[dev]' --config-settings editable_mode=strict >.venv/pip.log 2>&1; then
  grep -v "is ignored" .venv/pip.log >&2
  echo "setup: pip install failed (log: .venv/pip.log). A dependency change that conflicts with $constraints:" \
    "loosen the pin there, install, then run scripts/freeze-constraints.sh" >&2
  exit 1
fi
echo "$want" > "$stamp"

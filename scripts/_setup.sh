# Sourced by scripts/demo and scripts/test: create .venv and install cirron with every extra,
# through the project's own files only (pyproject.toml + constraints.txt + setup.py). Re-runs
# are no-ops until one of them, or the C hot path (cirron/core/_hot.c), changes.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "cirron needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
want=$(cat pyproject.toml constraints.txt setup.py cirron/core/_hot.c | sha256sum | cut -d' ' -f1)
stamp=.venv/.cirron-setup
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (first run takes a few minutes)..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi

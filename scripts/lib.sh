# Shared by scripts/*: a project virtualenv that installs from the registries only.
step() { printf '\n== %s\n' "$*"; }

ensure_venv() {
  local python=${PYTHON:-python3}
  if ! command -v "$python" >/dev/null; then
    echo "error: $python not found: install Python 3.11 or newer (e.g. apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python 3.11 or newer is needed, $python is $("$python" --version 2>&1)" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    "$python" -m venv .venv || { echo "error: python venv failed: apt-get install python3-venv" >&2; exit 1; }
  fi
}

pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"
}

#!/usr/bin/env bash
# Installs what `make demo` and `make test` need, and nothing twice:
# redis-server from Debian's packages when absent, a virtual environment in .venv with wanq,
# celery and the test tools. Safe to run again; it only acts on what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package) ..."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if ! command -v docker-compose >/dev/null 2>&1; then
  # Only to validate docker-compose.yml offline in the tests; no Docker engine is needed.
  echo "installing docker-compose (Debian package) ..."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    docker-compose >/dev/null
fi

if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] && [ "$(uname -m)" = x86_64 ]; then
  # Only for the test of a worker whose clock runs ahead (tests/test_clocks.py).
  echo "installing faketime (Debian package) ..."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq faketime >/dev/null || true
fi

PYTHON="${PYTHON:-python3}"
stamp=".venv/.wanq-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "creating .venv and installing wanq with its dependencies ..."
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

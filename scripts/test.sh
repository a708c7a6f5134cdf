#!/usr/bin/env bash
# Creates .venv-test, installs autodrop with its test extras, runs ruff (lint, format check) and the test suite
# on up to 4 worker processes (pytest-xdist; the suite is independent tests, and CI has 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-test
.venv-test/bin/python -m pip install -q --upgrade pip
.venv-test/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv-test/bin/ruff check .
.venv-test/bin/ruff format --check .
exec .venv-test/bin/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal "$@"

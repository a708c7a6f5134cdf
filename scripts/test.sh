#!/usr/bin/env bash
# Creates .venv-test, installs autodrop with its test extras, runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-test
.venv-test/bin/python -m pip install -q --upgrade pip
.venv-test/bin/python -m pip install -q -c constraints.txt -e ".[test]"
exec .venv-test/bin/python -m pytest -q "$@"

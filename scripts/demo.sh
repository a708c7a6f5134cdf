#!/usr/bin/env bash
# Creates .venv, installs autodrop with its benchmark extras, runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[bench]"
exec .venv/bin/autodrop demo --out results/demo "$@"

#!/usr/bin/env bash
# Runs the test suite against the oldest torch that pyproject.toml claims, pinned by constraints-oldest.txt.
# Creates .venv-oldest and installs autodrop with its test extras there: PyPI's CUDA build of torch, which
# does not import without its nvidia-* libraries (about 3 GB to download, 5.7 GB installed; it runs on the
# CPU). No ruff: lint and format do not depend on torch (scripts/test.sh checks them). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-oldest
.venv-oldest/bin/python -m pip install -q --upgrade pip
.venv-oldest/bin/python -m pip install -q -c constraints-oldest.txt -e ".[test]"
want=$(sed -n 's/^torch==//p' constraints-oldest.txt)
.venv-oldest/bin/python - "$want" <<'PY'
import sys, torch
print(f"torch {torch.__version__} (wanted {sys.argv[1]})", flush=True)
assert torch.__version__.split("+")[0] == sys.argv[1], "constraints-oldest.txt's torch was not installed"
PY
# Left out, each for a difference of torch 2.4 outside autodrop:
# - tests/dist: its worker imports fully_shard and DTensor from their public modules (torch >= 2.6 and 2.5;
#   2.4 has them under torch.distributed._composable.fsdp and torch.distributed._tensor), and torch 2.4's
#   FSDP2 needs CUDA (its lazy init creates a torch.cuda.Stream), so the gloo world on CPU cannot run it.
#   With the 2.4 import paths, DDP, DTensor meshes and the fault test pass (FSDP2 and the DCP resume cannot).
# - torch 2.4's SequentialLR steps the next scheduler with step(0) at a milestone, which warns (epoch
#   argument deprecated; torch 2.9 calls _update_lr(0) instead); these two tests turn warnings into errors
#   (with warnings ignored, both resume exactly).
# - torch 2.4's own StepLR returns the optimizer's tensor lr itself from get_last_lr() (later torch clones it):
#   the test's control case, not AutoDrop's.
exec .venv-oldest/bin/python -m pytest -q \
    --ignore=tests/dist \
    --deselect "tests/test_torch_conventions.py::test_compositions_resume_from_a_checkpoint_of_every_epoch_exactly[AutoDrop then cosine]" \
    --deselect "tests/test_torch_conventions.py::test_compositions_resume_from_a_checkpoint_of_every_epoch_exactly[warmup then StepLR (control)]" \
    --deselect "tests/test_torch_conventions.py::test_a_tensor_lr_keeps_its_type_and_is_never_aliased[StepLR]" \
    "$@"

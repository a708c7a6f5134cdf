"""Imports of optional dependencies, each failing with the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming ``purpose`` and ``pip install 'autodrop[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs {module}: pip install 'autodrop[{extra}]'") from error

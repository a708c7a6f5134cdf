import importlib
import subprocess
import sys

import pytest

from autodrop._optional import import_optional


def test_missing_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "some_framework", None)
    with pytest.raises(ImportError, match=r"my feature needs some_framework: pip install 'autodrop\[extra\]'"):
        import_optional("some_framework", "extra", "my feature")


@pytest.mark.parametrize(
    ("integration", "framework"),
    [("autodrop.integrations.lightning", "lightning"), ("autodrop.integrations.transformers", "transformers")],
)
def test_integrations_without_their_framework_name_the_extra(monkeypatch, integration, framework):
    monkeypatch.setitem(sys.modules, framework, None)
    for name in [n for n in sys.modules if n == integration or n.startswith(framework + ".")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=rf"{integration} needs {framework}.*pip install 'autodrop\[{framework}\]'"):
        importlib.import_module(integration)


def test_importing_autodrop_imports_no_optional_framework():
    code = (
        "import sys, autodrop, autodrop.integrations, autodrop.history\n"
        "print(sorted(m for m in ('lightning', 'transformers', 'tensorboard', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"

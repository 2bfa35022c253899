"""The package root exports exactly what ``__all__`` promises, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import sinkmatch


@pytest.mark.parametrize("name", sinkmatch.__all__)
def test_every_public_name_imports(name: str) -> None:
    value = getattr(sinkmatch, name)
    assert value is not None
    module = importlib.import_module("sinkmatch")
    assert getattr(module, name) is value


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        sinkmatch.no_such_name  # noqa: B018


def test_import_does_no_heavy_work() -> None:
    code = (
        "import sys, sinkmatch\n"
        "heavy = [m for m in ('triton', 'ot', 'cv2', 'matplotlib', 'sinkmatch.sinkhorn') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

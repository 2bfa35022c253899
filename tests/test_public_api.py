"""The package root exports exactly what ``__all__`` promises, lazily."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
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
        "heavy = [m for m in ('triton', 'ot', 'cv2', 'matplotlib', 'sinkmatch.solver') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


_FRESH_PROCESS_CHECK = """
import importlib, inspect, json, pkgutil, types
import torch
import sinkmatch
from sinkmatch import _EXPORTS

problems = []
children = {}  # package -> names of its submodules
for info in pkgutil.walk_packages(sinkmatch.__path__, "sinkmatch."):
    try:
        importlib.import_module(info.name)
    except ImportError as err:  # an optional dependency (Triton) missing: nothing to clash
        if "triton" not in str(err):
            raise
    parent, _, child = info.name.rpartition(".")
    children.setdefault(parent, set()).add(child)

for name in sinkmatch.__all__:
    if name == "__version__":
        continue
    got = getattr(sinkmatch, name)
    documented = getattr(importlib.import_module(_EXPORTS[name]), name)
    namespace = {}
    exec(f"from sinkmatch import {name} as imported", namespace)
    if got is not documented or namespace["imported"] is not documented:
        problems.append(f"sinkmatch.{name} is {got!r}, not {documented!r}")
    if isinstance(got, types.ModuleType):
        problems.append(f"sinkmatch.{name} is a module")
    elif inspect.isfunction(documented) and not callable(got):
        problems.append(f"sinkmatch.{name} is not callable")
    elif inspect.isclass(documented) and not inspect.isclass(got):
        problems.append(f"sinkmatch.{name} is not a class")
for package, subs in children.items():
    public = set(getattr(importlib.import_module(package), "__all__", ()))
    for clash in sorted(subs & public):
        problems.append(f"{package}.{clash} is both a submodule and a public name")

sinkmatch.sinkhorn_loss(torch.rand(5), torch.rand(6))
try:  # the symptom of issue 10: TypeError: 'module' object is not callable
    sinkmatch.sinkhorn(torch.rand(5), torch.rand(6))
except TypeError as err:
    problems.append(f"sinkmatch.sinkhorn(x, y) raised {err}")
print(json.dumps(problems))
"""


def test_public_names_survive_importing_every_submodule() -> None:
    # a fresh process: the package attribute of a submodule is bound when it is first imported,
    # so a public function named like a submodule turns into the module after any import of it
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_CHECK],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(sinkmatch.__path__, "sinkmatch.")]
    return ["sinkmatch", *(n for n in names if not n.endswith("_triton_kernels"))]


@pytest.mark.parametrize("name", _modules())
def test_doctests_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

r"""Griffe extension: read the reST markup of sinkmatch's docstrings as Markdown.

The docstrings follow the project's style guide: Google sections, reST roles for
cross-references (``:func:`solve_lambda```, ``:class:`~sinkmatch.backends.base.Geometry```) and
math (``:math:`\alpha``` and ``.. math::`` blocks). mkdocstrings renders docstrings as Markdown,
so before it parses them this extension rewrites

* ``:math:`X``` into ``\(X\)`` and a ``.. math::`` block into ``$$ ... $$`` (pymdownx.arithmatex);
* ``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``, ``:exc:`` into
  cross-references: the name is resolved in the scope of the documented object (as Python would
  see it there: members, imports, parents; relative module names like ``.base``; dotted names
  like ``Backend.prepare``). A public sinkmatch object becomes an autorefs link, so a link to an
  object missing from the API reference fails the strict build; a private one (a name with a
  leading underscore, or one without a docstring, which the reference does not render) is an
  optional link; a name outside sinkmatch (``torch.nn.Module``) stays
  code; a sinkmatch name that does not resolve is a warning (a typo fails the strict build).

The source files are not changed; ``help()`` keeps showing the docstrings as written.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>\S.*)?$")
_EXTERNAL = ("torch", "numpy", "np", "scipy", "math", "triton", "ot", "geomloss", "ott")

logger = griffe.logger


def _math_blocks(text: str) -> str:
    """``.. math::`` + an indented block -> ``$$`` ... ``$$`` at the directive's indentation."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_BLOCK.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body: list[str] = [m["inline"]] if m["inline"] else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        depth = min((_indent(b) for b in body if b.strip()), default=0)
        out += ["", f"{indent}$$", *(f"{indent}{b[depth:]}".rstrip() for b in body)]
        out += [f"{indent}$$", ""]
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _module_of(obj: griffe.Object) -> griffe.Object:
    while not obj.is_module:
        obj = obj.parent
    return obj


def _lookup(obj: griffe.Object, path: str) -> griffe.Object | None:
    try:
        found = obj.modules_collection[path]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if found.is_alias:
        try:
            return found.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return found


def _root_exports(obj: griffe.Object) -> dict[str, str]:
    """``sinkmatch._EXPORTS``: the root package's lazy names and the modules defining them."""
    root = obj.package
    exports = root.members.get("_EXPORTS")
    return {} if exports is None else ast.literal_eval(str(exports.value))


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The canonical path ``name`` refers to in ``obj``'s scope, or None if it is unknown."""
    root, _, attr = name.partition(".")
    if root == obj.package.name and attr in _root_exports(obj):  # sinkmatch.X (lazy export)
        name = f"{_root_exports(obj)[attr]}.{attr}"
    if name.startswith("."):  # relative module name, e.g. ``.base`` in sinkmatch.priors
        dots = len(name) - len(name.lstrip("."))
        package = _module_of(obj)
        if not package.is_init_module:
            dots += 1
        for _ in range(dots - 1):
            package = package.parent
        target = _lookup(obj, f"{package.path}.{name.lstrip('.')}")
        return None if target is None else target.path
    head, _, rest = name.partition(".")
    try:
        base = obj.resolve(head)
    except griffe.NameResolutionError:
        base = head
    target = _lookup(obj, f"{base}.{rest}" if rest else base)
    return None if target is None else target.path


def _role(obj: griffe.Object, match: re.Match[str]) -> str:
    short, name = match[2] == "~", match[3].strip()
    title = f"`{name.rsplit('.', 1)[-1] if short else name}`"
    path = _resolve(obj, name)
    if path is None:
        if name.split(".", 1)[0] not in _EXTERNAL:
            where = f"{obj.relative_filepath}:{obj.lineno}"
            logger.warning(f"{where}: {match[0]} does not resolve in the scope of {obj.path}")
        return title
    if not path.startswith("sinkmatch"):
        return title
    target = _lookup(obj, path)
    private = any(part.startswith("_") for part in path.split("."))
    if private or target is None or target.docstring is None:  # not rendered by mkdocstrings
        code = f"<code>{title[1:-1]}</code>"
        return f'<autoref identifier="{path}" optional>{code}</autoref>'
    return f"[{title}][{path}]"


def convert(obj: griffe.Object, text: str) -> str:
    """The docstring ``text`` of ``obj`` with its reST math and roles written as Markdown."""
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: rf"\({m[1]}\)", text)
    return _ROLE.sub(lambda m: _role(obj, m), text)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value)

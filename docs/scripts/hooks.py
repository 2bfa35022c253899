"""MkDocs hooks of the sinkmatch site (mkdocs.yml: ``hooks:``).

* ``on_files``: the figures of the Priors page are computed now by ``plot_priors.render()`` and
  added to the site as ``figures/priors/*.png``; they are never committed.
* ``on_page_markdown``:
  - a link that leaves ``docs/`` for a file of the repository (``../benchmarks/compare.py``,
    which is right when the Markdown is read on the forge) becomes a link to that file in the
    source repository (``repo_url``); a link to a file that does not exist is a warning, so the
    strict build fails;
  - the marker ``<!-- sinkmatch:public-api -->`` becomes the table of every public name of the
    package root (``sinkmatch.__all__``) with a link to its reference entry.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.sinkmatch")

ROOT = Path(__file__).resolve().parents[2]
FIGURES = "figures/priors"
API_MARKER = "<!-- sinkmatch:public-api -->"
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(!?\[(?:[^\[\]]|\[[^\]]*\])*\]\()([^)\s]+)(\))")
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc):`~?([^`]+)`")


def _load_plot_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "plot_priors", Path(__file__).with_name("plot_priors.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, *, config: Any) -> Files:
    sys.path.insert(0, str(ROOT))  # the sinkmatch of this checkout
    try:
        figures = _load_plot_module().render()
    finally:
        sys.path.remove(str(ROOT))
    for name, png in figures.items():
        files.append(File.generated(config, f"{FIGURES}/{name}", content=png))
    return files


# Pages whose Markdown is included from a file elsewhere in the repository: its links are
# written relative to that file's folder (here the repository root).
INCLUDED_FROM = {"changelog.md": ""}


def _outside_links(markdown: str, page_src: str, repo_url: str) -> str:
    """Rewrite relative links that leave docs/ (outside code fences)."""
    page_dir = posixpath.dirname(f"docs/{page_src}")
    base_dir = INCLUDED_FROM.get(page_src, page_dir)
    out, in_fence = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence:
            line = _LINK.sub(lambda m: _rewrite(m, base_dir, page_dir, page_src, repo_url), line)
        out.append(line)
    return "\n".join(out)


def _rewrite(
    match: re.Match[str], base_dir: str, page_dir: str, page_src: str, repo_url: str
) -> str:
    target = match[2]
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
        return match[0]
    path, _, anchor = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join(base_dir, path))
    if repo_path.startswith("docs/") or repo_path == "docs":
        if base_dir == page_dir:
            return match[0]  # a page of the site: MkDocs validates it
        local = posixpath.relpath(repo_path, page_dir) + (f"#{anchor}" if anchor else "")
        return f"{match[1]}{local}{match[3]}"
    if repo_path.startswith("..") or not (ROOT / repo_path).exists():
        log.warning(f"{page_src}: the link '{target}' points to no file of the repository")
        return match[0]
    url = f"{repo_url.rstrip('/')}/blob/main/{repo_path}" + (f"#{anchor}" if anchor else "")
    return f"{match[1]}{url}{match[3]}"


def _public_api_table() -> str:
    sys.path.insert(0, str(ROOT))
    try:
        import sinkmatch
    finally:
        sys.path.remove(str(ROOT))
    rows = ["| name | what it is | defined in |", "|---|---|---|"]
    for name in sinkmatch.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(sinkmatch, name)
        path = f"{obj.__module__}.{obj.__qualname__}"
        first = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")
        first = _ROLE.sub(lambda m: f"`{m[1].rsplit('.', 1)[-1]}`", first)
        first = re.sub(r":math:`([^`]+)`", r"\\(\1\\)", first).replace("|", "\\|")
        rows.append(f"| [`sinkmatch.{name}`][{path}] | {first} | `{obj.__module__}` |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Files) -> str:
    markdown = _outside_links(markdown, page.file.src_uri, config.repo_url or "")
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, _public_api_table())
    return markdown

"""The documentation site: it builds with warnings as errors, its links and anchors resolve, its
code blocks run (docs/scripts/codeblocks.py states the rule), and a newcomer's page runs in a fresh
process."""

from __future__ import annotations

import html.parser
import importlib.util
import os
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cb = _load("codeblocks")

# Blocks of pages owned by work in progress that do not pass yet, with what their owner must do.
# Each is an xfail(strict=True): once fixed it passes, the test fails, and the entry goes.
PENDING: dict[str, str] = {}


# ---------------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    return out


def test_site_builds_strict_with_every_page(site: Path) -> None:
    for page in ("getting_started", "priors", "reference/priors", "changelog"):
        assert (site / page / "index.html").is_file()
    changelog = (site / "changelog" / "index.html").read_text()
    assert "Keep a Changelog" in changelog  # included from CHANGELOG.md, not copied
    for figure in _load("plot_priors").FIGURES:
        assert (site / "figures" / "priors" / figure).stat().st_size > 10_000


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag in ("a", "img") and a.get("href" if tag == "a" else "src"):
            self.links.append(a["href" if tag == "a" else "src"])


def broken_links(site: Path) -> list[str]:
    """Relative links and anchors of the built HTML that resolve to nothing."""
    pages = {}
    for path in site.rglob("*.html"):
        parser = _Links()
        parser.feed(path.read_text(encoding="utf-8"))
        pages[path.relative_to(site).as_posix()] = parser
    bad = []
    for name, parser in pages.items():
        if name == "404.html":  # served from any depth; its links are root-relative
            continue
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("/"):
                continue
            target = name
            if parts.path:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), parts.path))
                if parts.path.endswith("/") or (site / target).is_dir():
                    target = posixpath.join(target, "index.html")
            if not (site / target).is_file():
                bad.append(f"{name}: {link} (no file {target})")
            elif parts.fragment and target in pages:
                if unquote(parts.fragment) not in pages[target].ids:
                    bad.append(f"{name}: {link} (no anchor #{parts.fragment} in {target})")
    return bad


def test_internal_links_and_anchors_of_the_site_resolve(site: Path) -> None:
    bad = broken_links(site)
    assert not bad, "broken links:\n" + "\n".join(bad[:40])


def test_link_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h2 id="x">x</h2><a href="#x">ok</a>')
    (tmp_path / "index.html").write_text(
        '<a href="a/">ok</a><a href="a/#x">ok</a><a href="a/#y">bad anchor</a>'
        '<a href="b/">bad page</a><img src="f.png"><a href="https://e.invalid/z">ext</a>'
    )
    bad = broken_links(tmp_path)
    assert len(bad) == 3
    assert any("#y" in b for b in bad) and any("b/" in b for b in bad)
    assert any("f.png" in b for b in bad)


# ----------------------------------------------------------------- the Markdown, without a build

_MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
# files that the build generates (docs/scripts/hooks.py), absent from the source tree
GENERATED = {DOCS / "figures" / "priors" / name for name in _load("plot_priors").FIGURES}


def _slugs(markdown: str) -> set[str]:
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in heads}


def markdown_broken_links(paths: list[Path]) -> list[str]:
    bad = []
    for path in paths:
        name = os.path.relpath(path, ROOT)
        text = path.read_text(encoding="utf-8")
        text_wo_code = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in _MD_LINK.findall(text_wo_code):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / unquote(file_part)).resolve() if file_part else path
            if not dest.exists() and dest not in GENERATED:
                bad.append(f"{name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                if anchor not in _slugs(dest.read_text(encoding="utf-8")):
                    bad.append(f"{name}: {target} (no heading #{anchor})")
    return bad


def test_markdown_links_of_readme_and_docs_resolve() -> None:
    bad = markdown_broken_links(cb.markdown_files())
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_markdown_link_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Some section\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#some-section) [bad](a.md#nope) [gone](c.md) [ok](#here)\n# Here\n"
        "![an [0, t] alt](d.png)\n"
    )
    bad = markdown_broken_links([page])
    assert len(bad) == 3 and "nope" in bad[0] and "c.md" in bad[1] and "d.png" in bad[2]


def test_links_leaving_docs_go_to_the_repository_and_missing_files_warn(caplog) -> None:
    hooks = _load("hooks")
    text = (
        "[c](../../benchmarks/compare.py) [p](priors.md#x) [w](https://e.invalid) "
        "[g](../../nope.py)"
    )
    with caplog.at_level("WARNING"):
        out = hooks._outside_links(text, "losses/x.md", "https://forge.invalid/sinkmatch")
    assert "(https://forge.invalid/sinkmatch/blob/main/benchmarks/compare.py)" in out
    assert "(priors.md#x)" in out and "(https://e.invalid)" in out and "(../../nope.py)" in out
    assert "../../nope.py" in caplog.text
    # the changelog page includes CHANGELOG.md: its links are relative to the repository root
    included = hooks._outside_links(
        "[d](docs/priors.md#x) [b](benchmarks/compare.py)", "changelog.md", "https://f.invalid"
    )
    assert "(priors.md#x)" in included
    assert "(https://f.invalid/blob/main/benchmarks/compare.py)" in included


def test_getting_started_shows_the_readme_commands_and_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (DOCS / "getting_started.md").read_text(encoding="utf-8")
    section = re.search(r"^## Set up\n(.*?)(?=^## )", readme, flags=re.S | re.M).group(1)
    setup = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    example = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    assert len(setup) == 2
    for block in [*setup, example]:
        assert block in page, f"docs/getting_started.md lacks, verbatim:\n{block}"


def test_benchmark_tables_are_the_ones_the_script_draws_from_the_csv(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text((DOCS / "benchmarks.md").read_text(encoding="utf-8"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "benchmarks/plot_results.py", "--doc", str(doc), "--no-figures"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert doc.read_text(encoding="utf-8") == (DOCS / "benchmarks.md").read_text(
        encoding="utf-8"
    ), (
        "docs/benchmarks.md differs from what benchmarks/plot_results.py writes from the CSV: "
        "rerun `python benchmarks/plot_results.py`"
    )


def test_every_public_module_has_a_reference_page() -> None:
    directives = set()
    for path in (DOCS / "reference").glob("*.md"):
        directives |= set(re.findall(r"^::: (\S+)", path.read_text(), flags=re.M))
    modules = set()
    for path in (ROOT / "sinkmatch").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1 and not any(p.startswith("_") for p in parts):
            modules.add(".".join(parts))
    missing = sorted(modules - directives)
    assert not missing, "no reference page for: " + "; ".join(
        f"add `::: {m}` to docs/reference/{m.split('.')[-1]}.md and the line "
        f"`- {m.split('.')[-1]}: reference/{m.split('.')[-1]}.md` under API reference in mkdocs.yml"
        for m in missing
    )


# ------------------------------------------------------------------------------- code blocks

ALL_BLOCKS = [b for path in cb.markdown_files() for b in cb.blocks(path)]


def _jobs() -> dict[str, dict]:
    jobs: dict[str, dict] = {}
    pages: dict[str, list] = {}
    for b in ALL_BLOCKS:
        pages.setdefault(b.path, []).append(b)
    for path, bs in pages.items():
        if path != "docs/getting_started.md" and any(
            b.lang in cb.PYTHON and b.marker != "skip" for b in bs
        ):
            jobs[f"page {path}"] = cb.page_job(bs)
    for b in ALL_BLOCKS:
        if b.lang in cb.SHELL and b.marker is None:
            for argv in cb.commands(b):
                if cb.static_check(argv)[0] == "parse":
                    jobs[f"{b.where} {shlex.join(argv)}"] = cb.parse_job(argv)
    return jobs


JOBS = _jobs()
# run with the page jobs (one interpreter for all): the parse check must catch a wrong flag
SELF_TEST_JOBS = {
    "self-test good": cb.parse_job(["python", "-m", "examples.css_ccnn", "demo", "--seeds", "2"]),
    "self-test bad": cb.parse_job(["python", "-m", "examples.css_ccnn", "demo", "--no-such-flag"]),
    "self-test script": cb.parse_job(
        ["python", "docs/scripts/plot_priors.py", "--out", "x", "--oops"]
    ),
}


def _marks(key: str) -> list:
    marks = [pytest.mark.triton] if key == "page docs/triton.md" else []
    reason = PENDING.get(key)
    return [*marks, pytest.mark.xfail(reason=reason, strict=True)] if reason else marks


@pytest.fixture(scope="module")
def outcomes():
    return cb.run_jobs({**JOBS, **SELF_TEST_JOBS})


@pytest.mark.parametrize("key", [pytest.param(k, id=k, marks=_marks(k)) for k in JOBS])
def test_code_block_runs_or_parses(key: str, outcomes) -> None:
    outcome = outcomes[key]
    assert outcome.error is None, f"{key}:\n{outcome.error}"


@pytest.mark.parametrize(
    "where,argv",
    [
        pytest.param(b.where, argv, id=f"{b.where} {shlex.join(argv)}")
        for b in ALL_BLOCKS
        if b.lang in cb.SHELL and b.marker is None
        for argv in cb.commands(b)
    ],
)
def test_shell_command_has_a_rule(where: str, argv: list[str]) -> None:
    verdict, why = cb.static_check(argv)
    assert verdict != "fail", f"{where}: {why}"


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, id=b.where) for b in ALL_BLOCKS if b.marker == "run"],
)
def test_shell_block_marked_run_runs(block) -> None:
    done = cb.run_shell(block)
    assert done.returncode == 0, f"{block.where}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_every_skipped_block_says_why() -> None:
    unexplained = [b.where for b in ALL_BLOCKS if b.marker == "skip" and not b.reason]
    assert not unexplained, f"<!-- docs-test: skip: REASON --> needs a reason: {unexplained}"
    assert all(k in JOBS for k in PENDING), "PENDING names a job that no longer exists"


def test_parse_check_rejects_a_wrong_flag_and_accepts_a_right_one(outcomes) -> None:
    assert outcomes["self-test good"].error is None
    assert "--no-such-flag" in outcomes["self-test bad"].error
    assert "--oops" in outcomes["self-test script"].error
    assert cb.static_check(["pip", "install", "-e", ".[nonexistent]"])[0] == "fail"
    assert cb.static_check(["python", "-m", "pytest", "tests/nope.py"])[0] == "fail"
    assert cb.static_check(["rm", "-rf", "x"])[0] == "fail"


def test_newcomer_path_getting_started_runs_in_a_fresh_process() -> None:
    page = cb.blocks(DOCS / "getting_started.md")
    assert any(b.lang == "python" for b in page)
    done = cb.run_fresh(page)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "CountPrior" in done.stdout

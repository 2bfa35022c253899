r"""Run the code blocks of the documentation (README.md and docs/**/*.md): the rule, and its tool.

The rule (stated for writers in docs/contributing.md):

* A ``python`` block runs. The blocks of one page run in order in one namespace, in a process of
  their own (forked from a process that has imported torch and sinkmatch, so that a page costs no
  interpreter start), with the working directory a fresh temporary folder and a time limit.
* A ``bash``/``sh``/``shell``/``console`` block is checked command by command (``&&``, ``;`` and
  ``|`` split commands; ``\`` continues a line; a ``console`` block's commands are its ``$ ``
  lines). A command that starts a program of this repository (``python -m examples.css_ccnn ...``,
  ``python benchmarks/compare.py ...``, ``python docs/scripts/plot_priors.py ...``) is parsed by
  that program's own argparse parser and stops there: an unknown command, flag or value fails,
  and nothing is trained or measured. ``pip install`` must name only extras that pyproject.toml
  defines; ``python -m pytest``, ``ruff`` and ``mkdocs`` must name existing paths; setting up a
  virtual environment is accepted. Any other command fails: add a rule here, or mark the block.
* A shell block preceded by ``<!-- docs-test: run -->`` is run for real by bash, from the
  repository root, with a time limit.
* Any block preceded by ``<!-- docs-test: skip: REASON -->`` is neither run nor parsed; the reason
  is required and shown in the test report. Blocks of other languages (``text``, no language,
  ``toml``, ...) are never run.

Use from a shell: ``python docs/scripts/codeblocks.py docs/priors.md`` runs one page's blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ("python", "py", "pycon")
SHELL = ("bash", "sh", "shell", "console")
PAGE_TIMEOUT = 120.0
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<kind>run|skip)\s*(?::\s*(?P<reason>.*?))?\s*-->")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None = None  # "run" or "skip"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def markdown_files() -> list[Path]:
    """README.md and every Markdown file under docs/, sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` (indented fences, e.g. in admonitions, included)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    rel = path.resolve().relative_to(ROOT).as_posix()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        lang = (m["info"].split() or [""])[0].strip("{}.").lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        marker, reason = _marker_before(lines, i)
        out.append(Block(rel, i + 1, lang, "\n".join(body) + "\n", marker, reason))
        i = j + 1
    return out


def _marker_before(lines: list[str], i: int) -> tuple[str | None, str]:
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    m = _MARKER.search(lines[k]) if k >= 0 else None
    return (None, "") if m is None else (m["kind"], (m["reason"] or "").strip())


# ------------------------------------------------------------------------------ shell commands


def commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block, each as its argv."""
    text = block.code
    if block.lang == "console":
        text = "\n".join(ln[2:] for ln in text.split("\n") if ln.startswith("$ "))
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.split("\n"):
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        argv: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                if argv:
                    out.append(argv)
                argv = []
            else:
                argv.append(token)
        if argv:
            out.append(argv)
    return out


def _extras() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return set(tomllib.load(fh)["project"]["optional-dependencies"])


def static_check(argv: list[str]) -> tuple[str, str | None]:
    """Classify a command: ``("ok", None)``, ``("parse", None)`` or ``("fail", why)``."""
    prog, args = argv[0], argv[1:]
    if prog in (".", "source") or argv[:3] in (["python3", "-m", "venv"], ["python", "-m", "venv"]):
        return "ok", None
    if prog in ("pip", "pip3") or argv[:3] == ["python", "-m", "pip"]:
        return _check_pip(args if prog.startswith("pip") else argv[3:])
    if prog in ("python", "python3"):
        if args[:2] == ["-m", "pytest"]:
            return _check_paths(args[2:], "pytest")
        if args and (args[0] == "-m" or args[0].endswith(".py")):
            return "parse", None
        return "fail", f"no rule for {shlex.join(argv)!r}"
    if prog in ("ruff", "mkdocs"):
        return _check_paths(args[1:], prog)
    return "fail", f"no rule for the command {shlex.join(argv)!r}"


def _check_pip(args: list[str]) -> tuple[str, str | None]:
    if not args or args[0] != "install":
        return "fail", f"only 'pip install' is checked, got pip {shlex.join(args)!r}"
    known = _extras()
    for spec in args[1:]:
        m = re.fullmatch(r"\.?\[(?P<extras>[^\]]*)\]|sinkmatch\[(?P<named>[^\]]*)\]", spec)
        if m is None:
            continue
        asked = set((m["extras"] or m["named"] or "").split(",")) - {""}
        if asked - known:
            return "fail", f"pip install asks for unknown extras {sorted(asked - known)}"
    return "ok", None


def _check_paths(args: list[str], prog: str) -> tuple[str, str | None]:
    takes_value = {"-m", "-k", "-p", "-o", "-c", "--config-file", "-f", "--select", "--ignore"}
    skip = False
    for a in args:
        if skip or a.startswith("-"):
            skip = a in takes_value
            continue
        path = a.split("::")[0]
        if ("/" in path or path.endswith((".py", ".md", ".yml"))) and not (ROOT / path).exists():
            return "fail", f"{prog}: no such path {path!r}"
    return "ok", None


# --------------------------------------------------------------------------- the child runner


_RUNNER = r"""
import argparse, contextlib, io, json, os, runpy, shutil, signal, sys, tempfile, time
import traceback
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
import torch
torch.set_num_threads(1)
import sinkmatch
jobs = json.load(open(sys.argv[1]))

class Parsed(Exception):
    pass

def parse_only(argv):
    depth = [0]
    def stop_after(real):
        def patched(self, *args, **kwargs):
            depth[0] += 1
            try:
                result = real(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:  # the program's own call (sub-parsers call in nested)
                raise Parsed()
            return result
        return patched
    argparse.ArgumentParser.parse_args = stop_after(argparse.ArgumentParser.parse_args)
    argparse.ArgumentParser.parse_known_args = stop_after(
        argparse.ArgumentParser.parse_known_args
    )
    sys.argv = list(argv[1:]) if argv[1] != "-m" else [argv[2], *argv[3:]]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if argv[1] == "-m":
                runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(argv[1])))
                runpy.run_path(argv[1], run_name="__main__")
    except Parsed:
        return None
    except SystemExit as e:
        if e.code in (0, None):
            return None
        return f"exited with {e.code} while parsing its arguments:\n{err.getvalue()[-2000:]}"
    return "the program finished without parsing any arguments"

def run_job(job):
    if job["kind"] == "parse":
        os.chdir(job["cwd"])
        sys.path.insert(0, job["cwd"])
        return parse_only(job["argv"])
    os.chdir(job["workdir"])
    ns = {"__name__": "__main__"}
    for block in job["blocks"]:
        code = compile(block["code"], block["where"], "exec")
        exec(code, ns)
    return None

results = {}
for key, job in jobs.items():
    job["workdir"] = tempfile.mkdtemp(prefix="docs-page-")
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            err = run_job(job)
        except BaseException:
            err = traceback.format_exc(limit=-8)
        sys.stdout.flush(); sys.stderr.flush()
        os.write(w, json.dumps(err).encode())
        os._exit(0)
    os.close(w)
    deadline = start + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.02)
    data = os.read(r, 1 << 20)
    os.close(r)
    shutil.rmtree(job["workdir"], ignore_errors=True)
    if status is None:
        err = f"timed out after {job['timeout']:.0f} s"
    elif not data:
        err = f"the process died (status {status})"
    else:
        err = json.loads(data)
    results[key] = {"error": err, "seconds": round(time.monotonic() - start, 2)}
print("@@RESULTS@@" + json.dumps(results))
"""


@dataclass
class Outcome:
    """What happened to one job: a page's python blocks or one shell command."""

    key: str
    error: str | None
    seconds: float


def run_jobs(jobs: dict[str, dict], *, timeout: float = 600.0) -> dict[str, Outcome]:
    """Run jobs in one child interpreter (one fork per job); see the module docstring."""
    if not jobs:
        return {}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(jobs, fh)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, fh.name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )
    finally:
        os.unlink(fh.name)
    marker = proc.stdout.rfind("@@RESULTS@@")
    if marker < 0:
        raise RuntimeError(f"the runner failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    raw = json.loads(proc.stdout[marker + len("@@RESULTS@@") :])
    return {k: Outcome(k, v["error"], v["seconds"]) for k, v in raw.items()}


def page_job(page_blocks: list[Block], timeout: float = PAGE_TIMEOUT) -> dict:
    runnable = [b for b in page_blocks if b.lang in PYTHON and b.marker != "skip"]
    return {
        "kind": "page",
        "blocks": [{"code": b.code, "where": b.where} for b in runnable],
        "timeout": timeout,
    }


def parse_job(argv: list[str], timeout: float = 60.0) -> dict:
    return {"kind": "parse", "argv": argv, "cwd": str(ROOT), "timeout": timeout}


def run_fresh(
    page_blocks: list[Block], timeout: float = PAGE_TIMEOUT
) -> subprocess.CompletedProcess:
    """A page's python blocks as one script, in a new interpreter, from an empty folder."""
    code = "\n".join(b.code for b in page_blocks if b.lang in PYTHON and b.marker != "skip")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory(prefix="newcomer-") as cwd:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
        )


def run_shell(block: Block, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """A block marked ``<!-- docs-test: run -->``: bash from the repository root."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the code blocks of Markdown pages.")
    parser.add_argument("pages", nargs="*", type=Path, help="default: README.md and docs/")
    args = parser.parse_args(argv)
    pages = [p.resolve() for p in args.pages] or markdown_files()
    jobs: dict[str, dict] = {}
    failures = []
    for page in pages:
        bs = blocks(page)
        if any(b.lang in PYTHON and b.marker != "skip" for b in bs):
            jobs[f"page {bs[0].path}"] = page_job(bs)
        for b in bs:
            if b.lang not in SHELL or b.marker == "skip":
                continue
            if b.marker == "run":
                done = run_shell(b)
                if done.returncode:
                    failures.append(f"{b.where}: exit {done.returncode}\n{done.stderr[-2000:]}")
                continue
            for cmd in commands(b):
                verdict, why = static_check(cmd)
                if verdict == "fail":
                    failures.append(f"{b.where}: {why}")
                elif verdict == "parse":
                    jobs[f"{b.where} {shlex.join(cmd)}"] = parse_job(cmd)
    start = time.monotonic()
    for key, outcome in run_jobs(jobs).items():
        status = "ok" if outcome.error is None else "FAILED"
        print(f"{status:6} {outcome.seconds:6.2f} s  {key}")
        if outcome.error is not None:
            failures.append(f"{key}:\n{outcome.error}")
    print(f"{len(jobs)} jobs in {time.monotonic() - start:.1f} s")
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())

"""README.md stays true: its usage example runs, and its two set-up commands are CI's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_usage_example_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README.md has no python example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "CountPrior" in printed


def setup_section(readme: str) -> str:
    """The README's "## Set up" section (other sections, e.g. "Develop", may hold commands too)."""
    match = re.search(r"^## Set up\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert match, "README.md has no '## Set up' section followed by another section"
    return match.group(1)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"```bash\n(.*?)```", setup_section(README), flags=re.S)
    assert len(commands) == 2
    demo, tests = (c.strip() for c in commands)
    assert "examples.css_ccnn demo" in demo
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"pip install (torch==\S+ -e \S+)", tests).group(1)
    assert install in ci
    assert "\npython -m pytest\n" in ci

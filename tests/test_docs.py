"""The documentation cannot rot: every block marked `<!-- run -->` in README.md and docs/*.md runs as written on a
small workspace and must succeed; every relative link and anchor resolves; the README stays one screenful.

A marked block is a fenced ```bash or ```python block whose previous non-blank line is exactly `<!-- run -->`.
The blocks of one file run in order in one folder (later blocks may use what earlier ones wrote) holding a copy
of the session's small trained workspace as `taslora-runs/` and a link to the repository's `benchmarks/`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import requires_fmnist

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "DESIGN.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- run -->"
README_MAX_LINES = 200
BLOCK_TIMEOUT_S = 1800  # a hung block; a marked block takes seconds to a minute on a quiet 2-core machine
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marked: bool

    def where(self) -> str:
        """file:line for messages."""
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of `path`, with whether the run marker stands right before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        out.append(Block(path, i + 1, m.group(1), "\n".join(lines[i + 1:j]) + "\n", prev == MARKER))
        i = j + 1
    return out


def marked_blocks(path: Path) -> list[Block]:
    """The blocks of `path` that the test runs."""
    return [b for b in fenced_blocks(path) if b.marked]


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one block (bash with -e and pipefail, or python) in `cwd`; raise AssertionError naming it if it fails."""
    if block.lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    elif block.lang == "python":
        script = cwd / f"block_{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        raise AssertionError(f"{block.where()}: a marked block must be bash or python, not '{block.lang}'")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"{block.where()} failed (exit {proc.returncode}):\n{block.code}\n--- stdout\n"
                             f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def block_env() -> dict[str, str]:
    """The venv's scripts (`taslora`, `python`) first on PATH; passive OpenMP waiting on a shared machine."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ----------------------------------------------------------------------------- the extractor itself


def test_extractor_finds_only_marked_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n<!-- run -->\n```bash\necho one\n```\n\n```bash\necho two\n```\n"
                   "<!-- run -->\n\n```python\nprint(3)\n```\n```text\nnot code\n```\n", encoding="utf-8")
    blocks = fenced_blocks(doc)
    assert [(b.lang, b.marked, b.line) for b in blocks] == [("bash", True, 4), ("bash", False, 8),
                                                             ("python", True, 13), ("text", False, 16)]
    assert [b.code for b in marked_blocks(doc)] == ["echo one\n", "print(3)\n"]


def test_a_failing_block_fails_the_test(tmp_path):
    bad = Block(tmp_path / "x.md", 3, "bash", "true\nfalse\ntrue\n", True)
    with pytest.raises(AssertionError, match="failed"):
        run_block(bad, tmp_path, block_env())
    with pytest.raises(AssertionError, match="must be bash or python"):
        run_block(Block(tmp_path / "x.md", 3, "text", "x\n", True), tmp_path, block_env())


def test_docs_have_runnable_blocks_of_known_languages():
    marked = [b for path in DOCS for b in marked_blocks(path)]
    assert {b.path.name for b in marked} >= {"README.md", "guide.md", "python-api.md"}
    for block in marked:
        assert block.lang in ("bash", "python"), block.where()


# ----------------------------------------------------------------------------- links and size


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_every_relative_link_and_anchor_resolves():
    link = re.compile(r"\]\(([^)\s]+)\)")
    problems = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in link.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{path.name}: {target} (no heading with that anchor)")
    assert not problems, problems


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for doc in ("docs/guide.md", "docs/results.md", "docs/integrity.md", "docs/python-api.md", "DESIGN.md"):
        assert f"]({doc}" in text, doc
    if "QUICKSTART_TABLE_PLACEHOLDER" in text:  # filled from a real `bash scripts/run.sh quickstart` log
        pytest.skip("README.md still waits for the summary table of a real quickstart run")
    assert "taslora quickstart summary" in text  # the real summary table of a quickstart run is shown


# ----------------------------------------------------------------------------- the blocks run


def _files_with_blocks() -> list[Path]:
    return [p for p in DOCS if marked_blocks(p)]


@requires_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("doc", _files_with_blocks(), ids=lambda p: p.name)
def test_marked_blocks_run_as_written(doc: Path, trained_workspace, tmp_path):
    shutil.copytree(trained_workspace["workdir"], tmp_path / "taslora-runs")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks", target_is_directory=True)
    env = block_env()
    for block in marked_blocks(doc):
        run_block(block, tmp_path, env)

"""The product carries no process notes: no issue numbers, no references to files outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("src", "csrc", "tests", "bench", "fuzz", "docs")
TOP_FILES = ("README.md", "CHANGELOG.md", "CONTRIBUTING.md", "Makefile", "pyproject.toml", "setup.py")
SUFFIXES = {".py", ".md", ".yaml", ".cpp", ".hpp", ".toml", ".txt", ""}
# DESIGN.md (case-sensitive): the notes file outside the repository, not docs/design.md
PATTERNS = [re.compile(p, re.I) for p in (r"\bissue\s+#?\d+", r"\(issue\b", r"\.\./shared", r"(?-i:\bDESIGN\.md\b)",
                                          r"\bseeds/")]


def _files():
    for name in TOP_FILES:
        yield ROOT / name
    for folder in FOLDERS:
        for p in (ROOT / folder).rglob("*"):
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts and p.name != Path(__file__).name:
                yield p


def test_no_process_notes_in_the_product():
    hits = []
    for path in _files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            # upstream bug trackers (pytorch, transformers, ...) may be cited by number; our own process may not
            if any(p.search(line) for p in PATTERNS) and not re.search(r"(pytorch|github\.com|#\d{4,})", line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "process notes in the product:\n" + "\n".join(hits)

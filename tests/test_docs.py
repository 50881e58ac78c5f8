"""The docs a user's clone has: short enough to read, and every link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_read_to_the_end():
    words = len(re.findall(r"\S+", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert words <= 1200, f"README.md has {words} words"


def test_every_link_stays_in_the_repository_and_resolves():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text, f"{doc.name} points outside the repository"
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://")):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: broken link {target}"

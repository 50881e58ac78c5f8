"""Provenance: the commit a result came from (named by the sender, or dirty only for code changes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from robustcaps.provenance import git_commit


def test_git_commit_named_by_the_sender_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTCAPS_GIT_COMMIT", "0123abc")
    assert git_commit() == "0123abc" and git_commit(tmp_path) == "0123abc"
    monkeypatch.delenv("ROBUSTCAPS_GIT_COMMIT")
    assert git_commit(tmp_path) == "unknown"  # not a checkout


def test_git_commit_is_dirty_for_code_changes_but_not_for_generated_results(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 40
    (tmp_path / "results" / "table.csv").write_text("b\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


def test_committed_records_show_the_home_directory_as_a_tilde(monkeypatch, tmp_path):
    from robustcaps.provenance import shown_path

    monkeypatch.setattr(Path, "home", lambda: tmp_path / "someone")
    assert shown_path(tmp_path / "someone" / ".cache" / "robustcaps" / "x") == "~/.cache/robustcaps/x"
    assert shown_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")

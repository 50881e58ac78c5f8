"""The matched-familiar-error protocol (HSF18 Table 2): who trains to what target, what is evaluated where."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustcaps import viewpoint
from robustcaps.errors import RobustcapsError
from robustcaps.presets import tiny
from robustcaps.viewpoint import Trained, run_viewpoint, table2_rows


@pytest.fixture
def recorded(monkeypatch):
    """Training and evaluation replaced by recorders: the protocol's logic without minutes of training."""
    calls = {"train": [], "evaluate": []}
    errors = {"cnn": {"familiar": 0.125, "novel": 0.30}, "capsnet": {"familiar": 0.14, "novel": 0.2}}

    def fake_train(config, run_dir):
        calls["train"].append((config, Path(run_dir)))
        return run_dir

    def fake_evaluate(run_dir, which, parts, device, multi_crop=False):
        calls["evaluate"].append((Path(run_dir).name, which, parts))
        family = "capsnet" if "caps" in Path(run_dir).name else "cnn"
        return Trained(Path(run_dir), Path(run_dir).name.rsplit("-", 1)[0], which,
                       {p: errors[family][p] for p in parts}, {p: 40 for p in parts})  # fmt: skip

    monkeypatch.setattr(viewpoint, "train", fake_train)
    monkeypatch.setattr(viewpoint, "evaluate_run", fake_evaluate)
    return calls


def test_capsules_are_stopped_at_the_cnns_familiar_error(recorded, tmp_path):
    preset = tiny()
    rows = run_viewpoint("azimuth", preset, tmp_path / "data", tmp_path / "runs", tmp_path / "out", "cpu",
                         note="test note", echo=lambda _: None)  # fmt: skip
    (cnn_config, cnn_dir), (caps_config, caps_dir) = recorded["train"]
    # The CNN first, with no target; then the capsules with the CNN's familiar error as their target.
    assert cnn_config.model == preset.cnn and cnn_config.target_familiar_error is None
    assert caps_config.model == preset.capsnet and caps_config.target_familiar_error == 0.125
    assert cnn_config.split == caps_config.split == "azimuth"
    assert dict(caps_config.model_overrides) == dict(preset.capsnet_overrides)
    # The CNN's familiar error is read from its val-selected checkpoint; the capsules' from the checkpoint
    # where the target was checked. Each is evaluated once, on familiar and novel: nothing else is chosen.
    assert recorded["evaluate"] == [(cnn_dir.name, "best", ("familiar", "novel")),
                                    (caps_dir.name, "last", ("familiar", "novel"))]  # fmt: skip
    by_family = rows.set_index("family")
    assert by_family.loc["capsnet", "familiar_gap"] == pytest.approx(0.015)
    assert by_family.loc["cnn", "paper_novel_error"] == 0.200
    assert by_family.loc["capsnet", "paper_novel_error"] == 0.135
    written = pd.read_csv(tmp_path / "out" / "azimuth.csv")
    assert list(written["novel_error"]) == [0.30, 0.2]
    markdown = (tmp_path / "out" / "azimuth.md").read_text()
    for text in ("30.0%", "20.0%", "13.5%", "3.7%", "+1.5 points", "test note"):
        assert text in markdown


def test_paper_numbers_per_split():
    cnn = Trained(Path("c"), "cnn", "best", {"familiar": 0.05, "novel": 0.2}, {"familiar": 9, "novel": 18})
    caps = Trained(
        Path("k"), "capsnet", "last", {"familiar": 0.04, "novel": 0.1}, {"familiar": 9, "novel": 18}
    )
    rows = table2_rows("elevation", cnn, caps).set_index("family")
    assert rows.loc["cnn", "paper_familiar_error"] == rows.loc["capsnet", "paper_familiar_error"] == 0.043
    assert (rows.loc["cnn", "paper_novel_error"], rows.loc["capsnet", "paper_novel_error"]) == (0.178, 0.123)
    assert rows.loc["cnn", "familiar_gap"] == pytest.approx(-0.01)
    assert rows.loc["capsnet", "target_familiar_error"] == 0.05


def test_full_split_is_not_a_viewpoint_split(recorded, tmp_path):
    with pytest.raises(RobustcapsError, match="--split full"):
        run_viewpoint("full", tiny(), tmp_path, tmp_path, tmp_path, "cpu", echo=lambda _: None)
    assert recorded["train"] == []


def test_cli_missing_data_is_one_line(tmp_path):
    from click.testing import CliRunner

    from robustcaps.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "viewpoint",
            "--split",
            "azimuth",
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "out"),
            "--runs",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 1 and result.output.startswith("Error: --data")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()

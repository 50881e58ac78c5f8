"""The matched-familiar-error protocol (HSF18 Table 2): who trains to what target, what is evaluated where."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustcaps.errors import RobustcapsError
from robustcaps.study import viewpoint
from robustcaps.study.presets import tiny
from robustcaps.study.viewpoint import Trained, run_viewpoint, table2_rows
from robustcaps.training import checkpoints

# The CNN's familiar error per epoch end (step: error) as its metrics.csv records it; its snapshots are the
# new lows (the trainer's rule). `best` (val-selected) is at step 40.
CNN_FAMILIAR = {10: 0.30, 20: 0.20, 30: 0.21, 40: 0.13, 50: 0.125}
ERRORS = {  # (family, checkpoint) -> errors
    ("cnn", "best"): {"familiar": 0.125, "novel": 0.30},
    ("capsnet", "last"): {"familiar": 0.14, "novel": 0.2},
    ("cnn", checkpoints.snapshot_name(20)): {"familiar": 0.20, "novel": 0.35},
    ("cnn", checkpoints.snapshot_name(40)): {"familiar": 0.13, "novel": 0.33},
}


@pytest.fixture
def recorded(monkeypatch):
    """Training and evaluation replaced by recorders: the protocol's logic without minutes of training.
    `recorded["errors"]` can be changed by a test before it runs the protocol."""
    calls = {"train": [], "evaluate": [], "errors": dict(ERRORS)}

    def fake_train(config, run_dir):
        calls["train"].append((config, Path(run_dir)))
        if config.familiar_snapshots:
            (Path(run_dir) / "checkpoints").mkdir(parents=True)
            steps, errors = list(CNN_FAMILIAR), list(CNN_FAMILIAR.values())
            pd.DataFrame({"step": steps, "familiar_error": errors}).to_csv(run_dir / checkpoints.METRICS_FILE)
            for step, error in CNN_FAMILIAR.items():
                if error == min(errors[: steps.index(step) + 1]):
                    checkpoints.checkpoint_path(run_dir, checkpoints.snapshot_name(step)).touch()
        return run_dir

    def fake_evaluate(run_dir, which, parts, device, multi_crop=False):
        calls["evaluate"].append((Path(run_dir).name, which, parts))
        family = "capsnet" if "caps" in Path(run_dir).name else "cnn"
        errors = calls["errors"][(family, which)]
        return Trained(
            Path(run_dir),
            Path(run_dir).name.rsplit("-", 1)[0],
            which,
            {p: errors[p] for p in parts},
            {p: 40 for p in parts},
        )

    monkeypatch.setattr(viewpoint, "train_or_resume", fake_train)
    monkeypatch.setattr(viewpoint, "evaluate_run", fake_evaluate)
    return calls


def test_capsules_are_stopped_at_the_cnns_familiar_error(recorded, tmp_path):
    preset = tiny()
    rows = run_viewpoint(
        "azimuth",
        preset,
        tmp_path / "data",
        tmp_path / "runs",
        tmp_path / "out",
        "cpu",
        note="test note",
        echo=lambda _: None,
    )
    (cnn_config, cnn_dir), (caps_config, caps_dir) = recorded["train"]
    # The CNN first, with no target (keeping familiar snapshots); then the capsules with the CNN's familiar
    # error as their target.
    assert cnn_config.model == preset.cnn.model and cnn_config.target_familiar_error is None
    assert cnn_config.familiar_snapshots and not caps_config.familiar_snapshots
    assert caps_config.model == preset.capsnet.model and caps_config.target_familiar_error == 0.125
    assert cnn_config.split == caps_config.split == "azimuth"
    assert dict(caps_config.model_overrides) == dict(preset.capsnet.model_overrides)
    # The CNN's familiar error is read from its val-selected checkpoint; the capsules' from the checkpoint
    # where the target was checked. The capsules stayed above the CNN (14% > 12.5%), so the CNN is also
    # stopped at its first epoch at or below 14%: step 40 (13%), not the later, lower step 50. Each is
    # evaluated once, on familiar and novel: nothing is chosen on novel data.
    both = ("familiar", "novel")
    assert recorded["evaluate"] == [
        (cnn_dir.name, "best", both),
        (caps_dir.name, "last", both),
        (cnn_dir.name, checkpoints.snapshot_name(40), both),
    ]
    paper = rows[rows["protocol"] == "paper"].set_index("family")
    assert paper.loc["capsnet", "familiar_gap"] == pytest.approx(0.015)
    assert paper.loc["cnn", "paper_novel_error"] == 0.200
    assert paper.loc["capsnet", "paper_novel_error"] == 0.135
    reverse = rows[rows["protocol"] == "reverse"].iloc[0]
    assert (reverse["family"], reverse["checkpoint"]) == ("cnn", checkpoints.snapshot_name(40))
    assert reverse["familiar_gap"] == pytest.approx(0.01) and reverse["target_familiar_error"] == 0.14
    assert pd.isna(reverse["paper_novel_error"])  # the paper has no such row
    written = pd.read_csv(tmp_path / "out" / "azimuth.csv")
    assert list(written["novel_error"]) == [0.30, 0.2, 0.33]
    markdown = (tmp_path / "out" / "azimuth.md").read_text()
    for text in ("30.0%", "20.0%", "13.5%", "3.7%", "1.5%", "33.0%", "(step 40)", "test note"):
        assert text in markdown


def test_no_reverse_match_when_the_capsules_reach_the_cnn(recorded, tmp_path):
    recorded["errors"][("capsnet", "last")] = {"familiar": 0.12, "novel": 0.2}
    rows = run_viewpoint(
        "elevation",
        tiny(),
        tmp_path / "data",
        tmp_path / "runs",
        tmp_path / "out",
        "cpu",
        echo=lambda _: None,
    )
    assert list(rows["protocol"]) == ["paper", "paper"] and len(recorded["evaluate"]) == 2


def test_reverse_match_names_a_cnn_run_without_snapshots(recorded, tmp_path, monkeypatch):
    recording_train = viewpoint.train_or_resume

    def train_then_lose_snapshots(config, run_dir):
        recording_train(config, run_dir)
        for path in (Path(run_dir) / "checkpoints").glob("*"):
            path.unlink()

    monkeypatch.setattr(viewpoint, "train_or_resume", train_then_lose_snapshots)
    with pytest.raises(RobustcapsError, match=r"step0000040\.pt: missing; .* without familiar snapshots"):
        run_viewpoint(
            "azimuth",
            tiny(),
            tmp_path / "data",
            tmp_path / "runs",
            tmp_path / "out",
            "cpu",
            echo=lambda _: None,
        )
    assert not (tmp_path / "out").exists()


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


def test_rows_count_the_novel_images_only_one_model_got_wrong():
    import torch

    def trained(model, wrong):
        wrong = torch.tensor(wrong, dtype=torch.bool)
        errors = {"familiar": 0.1, "novel": float(wrong.double().mean())}
        sizes = {"familiar": 4, "novel": len(wrong)}
        return Trained(Path(model), model, "best", errors, sizes, {"novel": wrong})

    caps = trained("capsnet", [1, 1, 0, 0, 1, 0])
    cnn, stopped = trained("cnn", [1, 0, 1, 0, 0, 0]), trained("cnn", [1, 1, 0, 1, 1, 1])
    rows = table2_rows("azimuth", cnn, caps, stopped).set_index("protocol", append=True)
    counts = rows[["novel_only_capsules_wrong", "novel_only_cnn_wrong"]].to_numpy().tolist()
    assert counts[0] == [2, 1] and counts[2] == [0, 2]  # the paper's CNN, then the CNN stopped early
    assert all(pd.isna(x) for x in counts[1])  # the capsules' own row
    blind = Trained(Path("cnn"), "cnn", "best", cnn.errors, cnn.sizes)  # no per-example results kept
    assert table2_rows("azimuth", blind, caps)["novel_only_cnn_wrong"].isna().all()


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

"""`robustcaps attack` on a run directory trained here on the rendered fixture: outputs, resume, errors."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from robustcaps.cli import cli
from robustcaps.cli.attack import parse_eps


@pytest.fixture(scope="module")
def run_dir(rendered_root, tmp_path_factory):
    from robustcaps.training import TrainConfig, fit

    config = TrainConfig(model="cnn-small", data=str(rendered_root), steps=60, batch_size=32, device="cpu")
    return fit(config, tmp_path_factory.mktemp("runs") / "cnn")


def invoke(*args: str):
    return CliRunner().invoke(cli, ["attack", *args, "--device", "cpu", "--no-progress"])


def test_attack_cli_writes_results_and_resumes(run_dir, tmp_path):
    out = tmp_path / "attacks"
    args = (
        str(run_dir),
        "--attack",
        "fgsm",
        "--attack",
        "pgd",
        "--eps",
        "0:0.4:0.2",
        "--n",
        "30",
        "--steps",
        "5",
        "--out",
        str(out),
    )
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    summary = pd.read_csv(out / "summary.csv")
    sweep = summary[summary["role"] == "sweep"]
    assert sorted(sweep["eps_std"].unique()) == pytest.approx([0.0, 0.2, 0.4])
    assert (sweep["eps_std"] * sweep["sigma_mean"]).to_numpy() == pytest.approx(sweep["eps_pixel"].to_numpy())
    assert {"fgsm", "pgd", "clean", "worst"} <= set(sweep["attack"]) and (summary["n"] == 30).all()
    for column in (
        "torchattacks_version",
        "torch_version",
        "git_commit",
        "device",
        "dataset",
        "seed",
    ):
        assert summary[column].notna().all(), column
    attacked = summary[~summary["attack"].isin(["clean", "worst"])]
    assert set(attacked["loss"]) == {"ce"}
    assert '"kind": "rendered"' in summary["dataset"].iloc[0]
    per_example = pd.read_csv(out / "per_example.csv")
    assert per_example["example"].nunique() == 30
    assert set(pd.read_csv(out / "checks.csv")["check"]) >= {"monotone_in_eps", "input_gradients"}

    cells = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == cells  # nothing recomputed
    assert pd.read_csv(out / "summary.csv")["value"].tolist() == summary["value"].tolist()


def test_attack_cli_errors_name_the_option(run_dir):
    bad_eps = invoke(str(run_dir), "--eps", "0:x:0.1")
    assert bad_eps.exit_code == 1 and "--eps" in bad_eps.output
    vote_on_cnn = invoke(str(run_dir), "--attack", "pgd-vote", "--n", "5")
    assert vote_on_cnn.exit_code == 1 and "--attack pgd-vote" in vote_on_cnn.output
    novel_of_full = invoke(str(run_dir), "--part", "novel", "--n", "5")
    assert novel_of_full.exit_code == 1 and "--part novel" in novel_of_full.output
    bad_crafting = invoke(str(run_dir), "--crafting", "fast")
    assert bad_crafting.exit_code == 2 and "--crafting" in bad_crafting.output


def test_attack_records_the_checkpoints_of_victim_and_source(run_dir, tmp_path):
    import json

    from robustcaps.training.checkpoints import checkpoint_path, load_checkpoint

    out = tmp_path / "transfer"
    args = (
        str(run_dir),
        "--attack",
        "fgsm",
        "--eps",
        "0.2",
        "--n",
        "10",
        "--no-checks",
        "--out",
        str(out),
        "--source",
        str(run_dir),
        "--which",
        "last",
        "--source-which",
        "best",
    )
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    steps = {which: load_checkpoint(checkpoint_path(run_dir, which))["step"] for which in ("best", "last")}
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["checkpoint"]) == {"last"} and set(summary["checkpoint_step"]) == {steps["last"]}
    assert set(summary["source"]) == {"self", str(run_dir)}
    recorded = json.loads((out / "attack_config.json").read_text())
    assert (recorded["checkpoint"], recorded["checkpoint_step"]) == ("last", steps["last"])
    assert (recorded["source_checkpoint"], recorded["source_checkpoint_step"]) == ("best", steps["best"])
    bad = invoke(*args[:-1], "latest")
    assert bad.exit_code == 1 and "--source-which 'latest'" in bad.output


def test_eps_grids_parse_inclusively():
    assert parse_eps(("0:0.5:0.05",)) == tuple(round(0.05 * i, 10) for i in range(11))
    assert parse_eps(("0.1,0.3", "0.2", "0.1")) == (0.1, 0.2, 0.3)


@pytest.fixture(scope="module")
def bundled(run_dir, rendered_root, tmp_path_factory):
    """Stand-ins for results/gpu/models: a tiny capsule network trained here, and the module's CNN."""
    from robustcaps.training import TrainConfig, fit

    bundled = tmp_path_factory.mktemp("bundled")
    caps = TrainConfig(
        model="capsnet-small",
        data=str(rendered_root),
        steps=4,
        batch_size=8,
        device="cpu",
        model_overrides={"conv1_channels": 8, "primary_types": 4},
    )
    fit(caps, bundled / "capsnet-full")
    (bundled / "cnn-full").symlink_to(run_dir, target_is_directory=True)
    return bundled


def test_attack_without_run_dir_compares_the_bundled_models_side_by_side(
    run_dir, bundled, tmp_path, monkeypatch
):
    from robustcaps.cli import options as shared

    monkeypatch.setattr(shared, "BUNDLED", bundled)
    monkeypatch.chdir(tmp_path)
    result = invoke("--eps", "0.1", "--attack", "fgsm", "--n", "20")
    assert result.exit_code == 0, result.output
    assert "capsules" in result.output and "CNN" in result.output and "The full sweep" in result.output
    out = tmp_path / "robustcaps-attack"
    summaries = {name: pd.read_csv(out / name / "summary.csv") for name in shared.BUNDLED_RUNS}
    for frame in summaries.values():  # the bundled defaults: no checks
        assert set(frame["role"]) == {"sweep"} and (frame["n"] == 20).all()
    clean_row = next(line for line in result.output.splitlines() if line.strip().startswith("clean"))
    for frame in summaries.values():  # each model's clean accuracy, as its own summary has it
        clean = frame.loc[frame["attack"] == "clean", "value"].iloc[0]
        assert f"{clean:.2f} (" in clean_row
    assert "--source: give RUN_DIR" in invoke("--source", str(run_dir)).output


def test_eval_without_run_dir_evaluates_the_bundled_models_into_the_current_folder(
    bundled, tmp_path, monkeypatch
):
    from robustcaps.cli import options as shared

    monkeypatch.setattr(shared, "BUNDLED", bundled)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["eval", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for name in shared.BUNDLED_RUNS:
        table = pd.read_csv(tmp_path / "robustcaps-eval" / name / "eval.csv")
        assert set(table["part"]) == {"test"} and not (bundled / name / "eval.csv").exists()
    monkeypatch.setattr(shared, "BUNDLED", tmp_path / "nowhere")
    missing = CliRunner().invoke(cli, ["eval", "--device", "cpu"])
    assert (
        missing.exit_code == 1 and "no bundled models" in missing.output and "give RUN_DIR" in missing.output
    )

"""Run directories: checkpoints load weights-only, RNG states round-trip, load_run rebuilds the model,
and every damaged file is one RobustcapsError line naming it."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from robustcaps.provenance import environment_metadata
from robustcaps.training import checkpoints
from robustcaps.training.config import TrainConfig, build_model, config_json


def _one_line_naming(error: pytest.ExceptionInfo, path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.randn(5), np.random.randn(5), random.random()
    atomic_torch_save(tmp_path / "rng.pt", {"model": {}, "rng": checkpoints.capture_rng_state()})
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    checkpoints.restore_rng_state(checkpoints.load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


def _make_run(run_dir, **overrides) -> tuple[TrainConfig, torch.nn.Module]:
    config = TrainConfig(model="cnn-small", data="/nowhere", stereo="samples", steps=1, **overrides)
    model = build_model(config)
    atomic_write_text(run_dir / checkpoints.CONFIG_FILE, config_json(config))
    atomic_write_json(run_dir / checkpoints.METADATA_FILE, environment_metadata("cpu"))
    for which in checkpoints.CHECKPOINTS:
        state = {"model": model.state_dict(), "step": 7, "stop_reason": "steps"}
        atomic_torch_save(checkpoints.checkpoint_path(run_dir, which), state)
    return config, model


def test_load_run_rebuilds_the_model_from_config_json(tmp_path):
    config, model = _make_run(tmp_path, model_overrides={"dropout": 0.25})
    loaded = checkpoints.load_run(tmp_path, "last")
    assert loaded.config == config and loaded.step == 7 and not loaded.model.training
    assert loaded.model.config.dropout == 0.25 and loaded.model.config.in_channels == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert "git_commit" in loaded.metadata


def test_a_run_reads_its_dataset_from_another_place_only_if_it_is_the_same(rendered_root, tmp_path):
    import shutil

    from robustcaps.data.norb import dataset_identity

    _make_run(tmp_path / "run")
    metadata = read_json(tmp_path / "run" / checkpoints.METADATA_FILE, "metadata")
    metadata["dataset"] = {**dataset_identity(rendered_root), "root": "/gone", "split": "full"}
    atomic_write_json(tmp_path / "run" / checkpoints.METADATA_FILE, metadata)
    moved = shutil.copytree(rendered_root, tmp_path / "moved")
    assert checkpoints.load_run(tmp_path / "run", data=moved).config.data == str(moved)
    other = shutil.copytree(rendered_root, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "seed": 1}))
    with pytest.raises(
        RobustcapsError, match=r"--data .*other: not the dataset this run was trained on \(seed"
    ):
        checkpoints.load_run(tmp_path / "run", data=other)
    with pytest.raises(RobustcapsError, match="--data .*nowhere: no such directory"):
        checkpoints.load_run(tmp_path / "run", data=tmp_path / "nowhere")


def test_a_copied_run_whose_rendered_data_are_not_here_renders_them_again(
    rendered_root, tmp_path, private_cache
):
    """results/models/* name the directory they were trained from, on another machine: the rendered
    stand-in is remade in the cache, byte-identical (SHA-256s checked); real smallNORB must be given."""
    from click.testing import CliRunner

    from robustcaps.cli import cli
    from robustcaps.data.norb import content_identity, dataset_identity

    _make_run(tmp_path / "run")  # config.json names data="/nowhere"
    metadata = read_json(tmp_path / "run" / checkpoints.METADATA_FILE, "metadata")
    trained_on = {**dataset_identity(rendered_root), "root": "/nowhere", "split": "full"}
    atomic_write_json(tmp_path / "run" / checkpoints.METADATA_FILE, metadata | {"dataset": trained_on})
    remade = checkpoints.load_run(tmp_path / "run").config.data
    assert remade.startswith(str(tmp_path / "cache")) and remade != str(rendered_root)
    assert content_identity(dataset_identity(remade)) == content_identity(dataset_identity(rendered_root))
    assert checkpoints.load_run(tmp_path / "run").config.data == remade  # rendered once
    rendered = json.loads((tmp_path / "cache" / Path(remade).name / "manifest.json").read_text())
    sha256 = dict.fromkeys(rendered["sha256"], "0" * 64)  # as if the renderer's bytes had changed
    atomic_write_json(
        tmp_path / "run" / checkpoints.METADATA_FILE, metadata | {"dataset": trained_on | {"sha256": sha256}}
    )
    with pytest.raises(RobustcapsError, match="^the stand-in rendered again at .*: not the dataset"):
        checkpoints.load_run(tmp_path / "run")
    atomic_write_json(tmp_path / "run" / checkpoints.METADATA_FILE, metadata | {"dataset": trained_on})
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--which", "last", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"using {remade}" in result.stderr
    smallnorb = {"kind": "smallnorb", "root": "/nowhere", "md5_verified": True, "md5": {}}
    atomic_write_json(tmp_path / "run" / checkpoints.METADATA_FILE, metadata | {"dataset": smallnorb})
    assert (
        checkpoints.load_run(tmp_path / "run").config.data == "/nowhere"
    )  # the weights load; the data cannot
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--which", "last", "--device", "cpu"])
    assert result.exit_code == 1 and "/nowhere: data directory not found" in result.output
    assert "pass --data" in result.output and len(result.output.strip().splitlines()) == 1


def test_exported_run_loads_with_the_same_weights_and_drops_the_optimiser(tmp_path):
    config, model = _make_run(tmp_path / "run")
    state = checkpoints.load_checkpoint(checkpoints.checkpoint_path(tmp_path / "run", "best"))
    state["optimizer"] = {"lots": torch.zeros(1000)}
    atomic_torch_save(checkpoints.checkpoint_path(tmp_path / "run", "best"), state)
    out = checkpoints.export_run(tmp_path / "run", tmp_path / "export")
    assert set(checkpoints.load_checkpoint(checkpoints.checkpoint_path(out, "best"))) == {
        "model",
        "step",
        "stop_reason",
    }
    loaded = checkpoints.load_run(out, "best")
    assert loaded.config == config and loaded.step == 7
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_an_exported_run_shows_its_data_under_home_and_still_finds_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    data = home / ".cache" / "stand-in"
    data.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    config, _ = _make_run(tmp_path / "run")
    config = dataclasses.replace(config, data=str(data))
    atomic_write_text(tmp_path / "run" / checkpoints.CONFIG_FILE, config_json(config))
    metadata = environment_metadata("cpu") | {"dataset": {"kind": "rendered", "root": str(data), "seed": 0}}
    atomic_write_json(tmp_path / "run" / checkpoints.METADATA_FILE, metadata)
    out = checkpoints.export_run(tmp_path / "run", tmp_path / "export")
    for name in (checkpoints.CONFIG_FILE, checkpoints.METADATA_FILE):
        text = (out / name).read_text()
        assert str(home) not in text and '"~/.cache/stand-in"' in text
    assert json.loads((out / checkpoints.METADATA_FILE).read_text())["dataset"]["seed"] == 0
    assert checkpoints.load_run(out).config == config  # `~` is this machine's home again


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing"])
def test_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    _make_run(tmp_path)
    path = checkpoints.checkpoint_path(tmp_path, "best")
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(
            {"garbage": b"not a checkpoint" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage]
        )
    with pytest.raises(RobustcapsError) as error:
        checkpoints.load_run(tmp_path, "best")
    _one_line_naming(error, path)


@pytest.mark.parametrize(
    "content", ["{not json", '["a list"]', '{"model": "cnn-small", "no_such_field": 1}', None]
)
def test_damaged_config_is_one_line_naming_the_file(tmp_path, content):
    _make_run(tmp_path)
    path = tmp_path / checkpoints.CONFIG_FILE
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(RobustcapsError) as error:
        checkpoints.load_run(tmp_path)
    _one_line_naming(error, path)


def test_weights_that_do_not_fit_the_config_are_reported(tmp_path):
    _make_run(tmp_path)
    other = build_model(TrainConfig(model="cnn", data="/nowhere", steps=1))
    path = checkpoints.checkpoint_path(tmp_path, "best")
    atomic_torch_save(path, {"model": other.state_dict(), "step": 1})
    with pytest.raises(RobustcapsError) as error:
        checkpoints.load_run(tmp_path)
    _one_line_naming(error, path)


def test_write_metrics_replaces_the_whole_file(tmp_path):
    rows = [{"epoch": 1, "step": 10, "val_error": 0.5}, {"epoch": 2, "step": 20, "val_error": float("nan")}]
    checkpoints.write_metrics(tmp_path, rows)
    checkpoints.write_metrics(tmp_path, rows[:1])
    assert (tmp_path / checkpoints.METRICS_FILE).read_text().splitlines() == [
        "epoch,step,val_error",
        "1,10,0.5",
    ]
    assert not list(tmp_path.glob(".*tmp"))

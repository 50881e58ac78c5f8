"""Training end to end on a tiny rendered set: kill -9 and resume is bit-identical, NaN stops cleanly,
the loss falls, the matched protocol stops on familiar error, and bad run directories are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robustcaps.cli import cli
from robustcaps.errors import RobustcapsError
from robustcaps.io import read_json
from robustcaps.models import routing_cpu, routing_kernels
from robustcaps.training import checkpoints, fit, losses
from robustcaps.training.config import TrainConfig, build_model, config_json, load_split, lr_factor
from robustcaps.training.evaluation import evaluate
from robustcaps.training.losses import spread_margin

# One thread: the same arithmetic in every process, and no starving the other tests.
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 90  # 2.7 epochs of 33 steps: the resume crosses epoch ends and mid-epoch checkpoints
TRAIN = ["--model", "cnn-small", "--steps", str(STEPS), "--batch-size", "8", "--checkpoint-every", "4"]
TIMING = {"img_per_s", "seconds"}


def _train(root, out, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "robustcaps", "train", "--data", str(root), "--out", str(out), *TRAIN]
    return subprocess.Popen([*command, *extra], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err.decode()[-2000:]


def _kill_after_first_checkpoint(process: subprocess.Popen, run_dir) -> int:
    last = checkpoints.checkpoint_path(run_dir, "last")
    deadline = time.monotonic() + 240
    while not last.exists():
        assert process.poll() is None and time.monotonic() < deadline, "training ended before a checkpoint"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return int(checkpoints.load_checkpoint(last)["step"])


@pytest.fixture(scope="module")
def killed_and_resumed(rendered_root, tmp_path_factory):
    """(uninterrupted run, run SIGKILLed after its first checkpoint and then resumed, step at the kill)."""
    base = tmp_path_factory.mktemp("runs")
    whole, interrupted = base / "whole", base / "interrupted"
    first = _train(rendered_root, whole)
    victim = _train(rendered_root, interrupted)
    killed_at = _kill_after_first_checkpoint(victim, interrupted)
    _finish(first)
    _finish(_train(rendered_root, interrupted, "--resume"))
    return whole, interrupted, killed_at


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(killed_and_resumed):
    whole, interrupted, killed_at = killed_and_resumed
    assert 0 < killed_at < STEPS
    a, b = (checkpoints.load_checkpoint(checkpoints.checkpoint_path(d, "last")) for d in (whole, interrupted))
    assert a["step"] == b["step"] == STEPS
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    metrics = [
        pd.read_csv(d / checkpoints.METRICS_FILE).drop(columns=list(TIMING)) for d in (whole, interrupted)
    ]
    pd.testing.assert_frame_equal(*metrics)
    for which in ("best", "last"):
        for run_dir in (whole, interrupted):
            result = CliRunner().invoke(cli, ["eval", str(run_dir), "--which", which, "--device", "cpu"])
            assert result.exit_code == 0, result.output
        assert (whole / checkpoints.EVAL_FILE).read_bytes() == (
            interrupted / checkpoints.EVAL_FILE
        ).read_bytes()
    resumed = read_json(interrupted / checkpoints.METADATA_FILE, "metadata")["resumed"]
    assert [r["at_step"] for r in resumed] == [killed_at]


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line_through_the_cli(killed_and_resumed, tmp_path):
    run_dir = shutil.copytree(killed_and_resumed[0], tmp_path / "run")
    last = checkpoints.checkpoint_path(run_dir, "last")
    last.write_bytes(last.read_bytes()[:1000])
    for command in (["eval", str(run_dir), "--which", "last"], ["train", "--out", str(run_dir), "--resume"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and str(last) in lines[0], result.output


def _config(root, **changes) -> TrainConfig:
    defaults = dict(
        model="cnn-small", data=str(root), batch_size=16, steps=40, max_per_part=128, device="cpu"
    )
    return TrainConfig(**(defaults | changes))


def test_cnn_loss_falls_and_best_is_chosen_on_validation(rendered_root, tmp_path):
    fit(_config(rendered_root, steps=64, max_per_part=None), tmp_path)
    metrics = pd.read_csv(tmp_path / checkpoints.METRICS_FILE)
    # 240 training pairs (one of the five instances per category validates): 15 steps an epoch
    assert list(metrics["step"]) == [15, 30, 45, 60, 64]
    assert metrics["train_loss"].iloc[-1] < 0.9 * metrics["train_loss"].iloc[0]
    best = checkpoints.load_run(tmp_path, "best")
    assert (
        best.step == metrics["step"][metrics["val_error"].idxmin()]
    )  # first epoch with the lowest val error
    assert metrics["val_error"].min() < 0.8  # chance is 0.8
    assert metrics["familiar_error"].isna().all()  # no look at test data unless the protocol asks


def test_calibrating_on_training_images_recentres_beta_and_is_recorded(rendered_root, tmp_path):
    common = dict(
        model="capsnet-small", recipe="paper", batch_size=4, steps=1, max_per_part=16, lr=1e-9, warmup_steps=0
    )  # the paper recipe calibrates β_u
    fit(_config(rendered_root, **common), tmp_path / "noise")
    fit(_config(rendered_root, calibrate_images=8, **common), tmp_path / "images")
    noise, images = (checkpoints.load_run(tmp_path / name, "last") for name in ("noise", "images"))
    assert images.config.calibrate_images == 8
    assert TrainConfig.from_json(tmp_path / "images" / checkpoints.CONFIG_FILE).calibrate_images == 8
    # β_u moved to the training images' median cost; the weights are the same draw (lr ~ 0)
    assert not torch.allclose(noise.model.conv_caps1.beta_u, images.model.conv_caps1.beta_u)
    assert torch.allclose(noise.model.conv1.weight, images.model.conv1.weight)


def test_capsnet_trains_on_spread_loss_with_the_configured_margin(rendered_root, tmp_path):
    config = _config(
        rendered_root, model="capsnet-small", batch_size=4, steps=2, max_per_part=8, margin_step_scale=1
    )
    fit(config, tmp_path)
    row = pd.read_csv(tmp_path / checkpoints.METRICS_FILE).iloc[-1]
    assert row["margin"] == pytest.approx(spread_margin(2, scale=1)) and math.isfinite(row["train_loss"])
    loaded = checkpoints.load_run(tmp_path, "last")
    assert loaded.model.family == "capsnet" and loaded.config == config
    assert TrainConfig.from_json(tmp_path / checkpoints.CONFIG_FILE) == config


def test_training_with_fused_routing_gives_the_plain_weights_and_loads_as_plain(
    rendered_root, tmp_path, monkeypatch
):
    import robustcaps.models.capsnet as capsnet

    calls = []
    fused_em_routing = capsnet.fused_em_routing
    monkeypatch.setattr(
        capsnet, "fused_em_routing", lambda *a, **k: calls.append(1) or fused_em_routing(*a, **k)
    )
    tiny = {"conv1_channels": 8, "primary_types": 4, "convcaps1_types": 4, "convcaps2_types": 4}
    common = dict(model="capsnet-small", model_overrides=tiny, batch_size=4, steps=3, max_per_part=8)
    fit(_config(rendered_root, **common), tmp_path / "plain")
    assert not calls
    fit(_config(rendered_root, routing="fused", **common), tmp_path / "fused")
    assert calls, "training computed routing the fused way"
    fit(_config(rendered_root, routing="fused", recompute="none", **common), tmp_path / "kept")
    names = ("plain", "fused", "kept")
    plain, fused, kept = (checkpoints.load_run(tmp_path / name, "last") for name in names)
    loaded_routing = "cpu" if routing_cpu.available() else "plain"  # the plain function, on a CPU in C++
    assert fused.config.routing == "fused" and fused.model.routing == loaded_routing  # evaluation path
    assert kept.config.recompute == "none" and fused.config.recompute == "all"
    for other in (fused, kept):
        weights = zip(plain.model.state_dict().items(), other.model.state_dict().values(), strict=True)
        for (name, want), got in weights:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)  # float32 rounding only
    with pytest.raises(RobustcapsError, match="--routing fused: cnn-small has no EM routing"):
        fit(_config(rendered_root, routing="fused", steps=1), tmp_path / "cnn")
    with pytest.raises(RobustcapsError, match="--routing 'vectorised'"):
        _config(rendered_root, routing="vectorised")
    with pytest.raises(RobustcapsError, match="--recompute none: only with fused or triton"):
        fit(_config(rendered_root, recompute="none", **common), tmp_path / "plain-kept")
    assert not (tmp_path / "plain-kept" / "checkpoints").exists()
    with pytest.raises(RobustcapsError, match="--recompute 'some'"):
        _config(rendered_root, recompute="some")
    monkeypatch.setattr(routing_kernels, "INTERPRETED", False)  # a CPU without Triton's interpreter
    with pytest.raises(RobustcapsError, match="--routing triton: routing='triton' needs a CUDA GPU"):
        fit(_config(rendered_root, routing="triton", **common), tmp_path / "triton")
    assert not (tmp_path / "triton" / "checkpoints").exists()
    as_option = dict(common, model_overrides=dict(tiny, routing="triton"))
    with pytest.raises(RobustcapsError, match="needs a CUDA GPU"):
        fit(_config(rendered_root, **as_option), tmp_path / "triton-option")
    fit(_config(rendered_root, **dict(common, model_overrides=dict(tiny, routing="fused"))), tmp_path / "opt")
    assert checkpoints.load_run(tmp_path / "opt", "last").model.routing == (
        "cpu" if routing_cpu.available() else "plain"
    ), "loaded models route plainly, on a CPU in the C++ kernel"


def test_patience_stops_at_a_plateau_and_a_raised_patience_trains_on(rendered_root, tmp_path):
    # lr ~ 0: the weights never change, so only the first validation lowers the best val error
    frozen = _config(rendered_root, steps=200, batch_size=16, lr=1e-12, warmup_steps=0, patience=2)
    fit(frozen, tmp_path)
    metrics = pd.read_csv(tmp_path / checkpoints.METRICS_FILE)
    assert list(metrics["epoch"]) == [1, 2, 3], "the best at epoch 1, then two validations without a fall"
    last = checkpoints.load_checkpoint(checkpoints.checkpoint_path(tmp_path, "last"), "cpu")
    assert last["stop_reason"] == "plateau" and last["progress"]["stale_validations"] == 2
    fit(dataclasses.replace(frozen, patience=3), tmp_path, resume=True)
    assert list(pd.read_csv(tmp_path / checkpoints.METRICS_FILE)["epoch"]) == [1, 2, 3, 4]
    with pytest.raises(RobustcapsError, match="--patience"):
        dataclasses.replace(frozen, patience=-1)


def test_target_familiar_error_stops_and_is_recorded(rendered_root, tmp_path):
    fit(_config(rendered_root, target_familiar_error=1.0), tmp_path)
    metrics = pd.read_csv(tmp_path / checkpoints.METRICS_FILE)
    assert len(metrics) == 1 and metrics["familiar_error"].notna().all()
    assert checkpoints.load_run(tmp_path, "last").stop_reason == "target"


def test_familiar_snapshots_are_kept_at_each_new_low_and_change_nothing_else(rendered_root, tmp_path):
    config = _config(rendered_root, split="azimuth", batch_size=8, steps=60)
    fit(dataclasses.replace(config, familiar_snapshots=True), tmp_path / "kept")
    familiar = pd.read_csv(tmp_path / "kept" / checkpoints.METRICS_FILE).set_index("step")["familiar_error"]
    lows = list(familiar.index[familiar < familiar.cummin().shift(fill_value=math.inf)])
    snapshots = (tmp_path / "kept" / "checkpoints").glob(f"{checkpoints.SNAPSHOT_PREFIX}*.pt")
    kept = sorted(int(p.stem.removeprefix(checkpoints.SNAPSHOT_PREFIX)) for p in snapshots)
    assert len(familiar) >= 4 and len(kept) >= 2 and kept == lows
    # a snapshot holds the weights that gave the recorded familiar error, and loads like best/last
    snapshot = checkpoints.load_run(tmp_path / "kept", checkpoints.snapshot_name(kept[-1]))
    data = load_split(snapshot.config)
    assert snapshot.step == kept[-1]
    assert evaluate(snapshot.model, data.familiar, "cpu")["error"] == familiar.loc[kept[-1]]
    # evaluating familiar data each epoch draws no random numbers: the trained weights are unchanged
    fit(config, tmp_path / "plain")
    kept_last, plain_last = (
        checkpoints.load_run(tmp_path / d, "last").model.state_dict() for d in ("kept", "plain")
    )
    for (name, want), got in zip(plain_last.items(), kept_last.values(), strict=True):
        assert torch.equal(got, want), name


def test_eval_every_validates_every_nth_epoch_and_the_last_and_changes_no_weight(rendered_root, tmp_path):
    config = _config(rendered_root, split="azimuth", batch_size=8, steps=60, familiar_snapshots=True)
    fit(config, tmp_path / "each")
    fit(dataclasses.replace(config, eval_every=3), tmp_path / "every3")
    each, every3 = (pd.read_csv(tmp_path / d / checkpoints.METRICS_FILE) for d in ("each", "every3"))
    assert len(each) == len(every3) >= 4 and each["step"].tolist() == every3["step"].tolist()
    validated = (every3["epoch"] % 3 == 0) | (every3.index == len(every3) - 1)
    assert validated.iloc[-1] and not validated.all()
    for column in ("val_error", "familiar_error"):
        assert every3[column].notna().tolist() == validated.tolist(), column
        # where both validated, the same weights gave the same errors; the training loss never differs
        assert every3[column][validated].tolist() == each[column][validated].tolist(), column
    assert every3["train_loss"].tolist() == each["train_loss"].tolist()
    # best.pt and the snapshots come from validated epochs only
    best = checkpoints.load_run(tmp_path / "every3", "best").step
    assert best in every3["step"][validated].tolist()
    assert best == every3["step"][every3["val_error"].idxmin()]
    snapshots = (tmp_path / "every3" / "checkpoints").glob(f"{checkpoints.SNAPSHOT_PREFIX}*.pt")
    kept = {int(p.stem.removeprefix(checkpoints.SNAPSHOT_PREFIX)) for p in snapshots}
    assert kept and kept <= set(every3["step"][validated])
    # the reverse match (viewpoint.reverse_match) reads past the unvalidated rows to the snapshot it needs
    from robustcaps.study.viewpoint import reverse_match

    lowest = every3["familiar_error"].min()
    matched = reverse_match(tmp_path / "every3", lowest, "cpu")
    first = int(every3["step"][every3["familiar_error"] <= lowest].iloc[0])
    assert matched.which == checkpoints.snapshot_name(first) and matched.errors["familiar"] == lowest
    with pytest.raises(RobustcapsError, match="--eval-every 0"):
        dataclasses.replace(config, eval_every=0)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(rendered_root, tmp_path, monkeypatch):
    real, calls = losses.training_loss, []

    def poisoned(*args, **kwargs):
        loss, output = real(*args, **kwargs)
        calls.append(1)
        return (loss * math.nan if len(calls) > 6 else loss), output

    monkeypatch.setattr(losses, "training_loss", poisoned)
    with pytest.raises(RobustcapsError, match="nan") as error:
        fit(_config(rendered_root, checkpoint_every=3), tmp_path)
    last = checkpoints.checkpoint_path(tmp_path, "last")
    assert "\n" not in str(error.value) and str(last) in str(error.value)
    state = checkpoints.load_checkpoint(last)
    assert state["step"] == 6 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_resume_refuses_a_different_run_and_fresh_training_refuses_an_old_one(rendered_root, tmp_path):
    config = _config(rendered_root, steps=4)
    fit(config, tmp_path, resume=True)  # killed before config.json was written: nothing to resume, start
    assert checkpoints.load_run(tmp_path, "last").step == 4
    with pytest.raises(RobustcapsError, match="--out"):
        fit(config, tmp_path)
    with pytest.raises(RobustcapsError, match="lr") as error:
        fit(dataclasses.replace(config, lr=1e-4), tmp_path, resume=True)
    assert str(tmp_path / checkpoints.CONFIG_FILE) in str(error.value)
    fit(dataclasses.replace(config, steps=8), tmp_path, resume=True)  # a longer run may continue
    assert checkpoints.load_run(tmp_path, "last").step == 8


def test_config_json_round_trip_and_bad_values(tmp_path):
    config = TrainConfig(
        model="capsnet",
        model_overrides={"iterations": 2, "estep": "position"},
        split="azimuth",
        stereo="samples",
        steps=123,
        lr=1e-3,
        margin_step_scale=500.0,
        target_familiar_error=0.04,
        amp="bf16",
    )
    (tmp_path / "config.json").write_text(config_json(config))
    assert TrainConfig.from_json(tmp_path / "config.json") == config
    for option, value in [("--split", "diagonal"), ("--batch-size", 0), ("--amp", "fp8")]:
        field = option[2:].replace("-", "_")
        with pytest.raises(RobustcapsError, match=option):
            dataclasses.replace(config, **{field: value})


def test_warmup_rises_linearly_then_follows_the_paper_decay():
    paper = TrainConfig(warmup_steps=0, lr_decay_steps=250.0)
    warm = dataclasses.replace(paper, warmup_steps=100)
    decay = [0.96 ** (step / 250.0) for step in range(300)]
    assert [
        lr_factor(paper, 300)(step) for step in range(300)
    ] == decay  # no warm-up: the old schedule exactly
    assert lr_factor(warm, 300)(0) == pytest.approx(
        0.01 * decay[0]
    )  # Adam's first step moves weights by lr/100
    assert lr_factor(warm, 300)(49) == pytest.approx(0.5 * decay[49])
    assert [lr_factor(warm, 300)(step) for step in range(99, 300)] == decay[99:]
    with pytest.raises(RobustcapsError, match="--warmup-steps"):
        dataclasses.replace(paper, warmup_steps=-1)


def test_cosine_schedule_warms_up_then_falls_to_the_floor_at_the_last_step():
    cosine = TrainConfig(lr_schedule="cosine", lr_min_factor=0.05, warmup_steps=100)
    factor = [lr_factor(cosine, 1100)(step) for step in range(1101)]
    assert factor[49] == pytest.approx(0.5) and factor[99] == pytest.approx(1.0)
    assert factor[600] == pytest.approx(0.525)  # half-way: the mean of 1 and the floor
    assert factor[1100] == pytest.approx(0.05) and min(factor[99:]) == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factor[99:], factor[100:], strict=False)), (
        "non-increasing after warm-up"
    )
    for option, value in [("--lr-schedule", "step"), ("--lr-min-factor", 1.5)]:
        with pytest.raises(RobustcapsError, match=option):
            dataclasses.replace(cosine, **{option[2:].replace("-", "_"): value})


def test_a_config_json_from_before_warmup_rebuilds_a_run_without_it(tmp_path):
    """Resuming or reloading an old run must not silently add the warm-up or instance validation it never
    had."""
    old = TrainConfig(model="cnn", steps=1000).to_dict()
    del old["warmup_steps"], old["val"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert TrainConfig.from_json(tmp_path / "config.json").warmup_steps == 0
    assert TrainConfig.from_json(tmp_path / "config.json").val == "pairs"
    assert TrainConfig().warmup_steps == 100  # new runs warm up
    assert TrainConfig().val == "instances"  # and validate on held-out instances
    fresh = TrainConfig(model="cnn", steps=1000)
    (tmp_path / "config.json").write_text(config_json(fresh))
    assert TrainConfig.from_json(tmp_path / "config.json") == fresh


def test_bf16_autocast_on_a_capsule_network_is_warned_against(tmp_path, monkeypatch):
    from robustcaps.cli import train as train_cli

    trained = []
    monkeypatch.setattr(train_cli.training, "fit", lambda config, out, resume: trained.append(config.amp))
    runner = CliRunner()
    for model, warned in (("capsnet-small", True), ("cnn-small", False)):
        args = ["train", "--model", model, "--amp", "bf16", "--out", str(tmp_path / model), "--device", "cpu"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert ("warning: --amp bf16 with a capsule network" in result.stderr) is warned
    assert trained == ["bf16", "bf16"]  # a warning, not a refusal


def test_capsule_training_runs_its_convolutions_without_tf32_and_restores_the_flag(rendered_root, tmp_path):
    # TF32 convolutions put capsule gradients ~15 % from float64 (models.common.full_float32_convolutions)
    seen = []

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled():  # the training steps
            seen.append(torch.backends.cudnn.allow_tf32)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        for model in ("capsnet-small", "cnn-small"):
            seen.clear()
            fit(_config(rendered_root, model=model, batch_size=4, steps=2, max_per_part=8), tmp_path / model)
            assert seen and set(seen) == {model == "cnn-small"}  # the CNN keeps torch's default
            assert torch.backends.cudnn.allow_tf32  # restored
    finally:
        handle.remove()


def test_compile_mode_reaches_torch_compile_and_each_cuda_graph_step_is_marked(
    rendered_root, tmp_path, monkeypatch
):
    """Under CUDA graphs a step's outputs live in buffers the next replay overwrites: every training step
    must be announced (torch.compiler.cudagraph_mark_step_begin), or the second step fails on a GPU."""
    compiled, marks = [], []

    def compile(model, mode=None):
        compiled.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    config = _config(rendered_root, steps=5, compile=True)
    fit(config, tmp_path / "default")
    assert compiled == ["default"] and not marks
    fit(dataclasses.replace(config, compile_mode="reduce-overhead"), tmp_path / "graphs")
    assert compiled[-1] == "reduce-overhead" and len(marks) == 5
    # how the same function is computed, not what is trained: a resumed run may change it
    graphs = dataclasses.replace(config, steps=7, compile_mode="reduce-overhead")
    fit(graphs, tmp_path / "default", resume=True)
    assert checkpoints.load_run(tmp_path / "default", "last").step == 7 and len(marks) == 7
    with pytest.raises(RobustcapsError, match="--compile-mode 'reduce-overhead'.*only with --compile"):
        dataclasses.replace(config, compile=False, compile_mode="reduce-overhead")
    result = CliRunner().invoke(cli, ["train", "--compile-mode", "max", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--compile-mode" in result.output


def _tiny_cnn_train(root) -> list[str]:
    """`robustcaps train` of cnn-small on the rendered fixture, on the CPU, at batch 8."""
    return ["train", "--data", str(root), "--model", "cnn-small", "--batch-size", "8", "--device", "cpu"]


def test_train_options_default_to_trainconfig_and_set_reaches_the_rest(rendered_root, tmp_path):
    from robustcaps.cli.train import train as train_command

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for param in train_command.params:
        if param.name in defaults and param.name != "speed":  # the CLI picks a speed; the API takes one
            assert param.default == defaults[param.name], f"--{param.name} restates another default"
    shown = CliRunner().invoke(cli, ["train", "--help"]).output
    assert (
        "--set KEY=VALUE" in shown and "--lr-schedule" not in shown and 'lr_schedule="exponential"' in shown
    )
    run = tmp_path / "run"
    args = _tiny_cnn_train(rendered_root)
    result = CliRunner().invoke(
        cli, [*args, "--steps", "2", "--out", str(run), "--set", "lr_schedule=cosine", "--set", "patience=3"]
    )
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json(run / checkpoints.CONFIG_FILE)
    assert (config.lr_schedule, config.patience, config.steps) == ("cosine", 3, 2)
    # resumed: what is given changes, the rest comes from config.json
    result = CliRunner().invoke(
        cli, ["train", "--out", str(run), "--resume", "--steps", "3", "--set", "patience=5"]
    )
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json(run / checkpoints.CONFIG_FILE)
    assert (config.lr_schedule, config.patience, config.steps, config.batch_size) == ("cosine", 5, 3, 8)
    for bad, message in [
        ("learning_rate=1", "--set learning_rate: not a training setting"),
        ("lr", "KEY=VALUE"),
    ]:
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "bad"), "--set", bad])
        assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "bad").exists()


def test_speed_auto_picks_the_fastest_path_for_the_device_and_the_run(monkeypatch):
    from robustcaps.training.config import AUTO_COMPILE_IMAGES, resolve_speed

    caps = TrainConfig(model="capsnet-small", speed="auto", batch_size=32)
    short, long = dataclasses.replace(caps, steps=10), dataclasses.replace(caps, steps=AUTO_COMPILE_IMAGES)
    assert resolve_speed(short, "cpu", 4320).speed == "reference"  # compiling would not pay for itself
    fast = resolve_speed(long, "cpu", 4320)
    assert (fast.speed, fast.compile, fast.routing, fast.recompute) == ("compiled", True, "cpu", "none")
    assert resolve_speed(dataclasses.replace(caps, epochs=20), "cpu", 4320).speed == "compiled"  # 2,700 steps
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "triton" else None)
    gpu = resolve_speed(short, "cuda", 4320)
    assert (gpu.speed, gpu.routing, gpu.compile_mode) == ("triton", "triton", "reduce-overhead")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    gpu = resolve_speed(short, "cuda", 4320)
    assert (gpu.speed, gpu.routing) == (
        "compiled",
        "fused",
    )  # a GPU without triton: the C++ kernel is the CPU's
    assert resolve_speed(TrainConfig(model="cnn", speed="auto"), "cuda", 4320).speed == "reference"
    custom = TrainConfig(model="capsnet-small", compile=True, routing="fused")
    assert resolve_speed(custom, "cpu", 4320) == custom  # the settings as given
    # the other capsule families have one routing path: compiled as they are, on long runs only
    for model in ("dynamic-capsnet-small", "sr-capsnet-small"):
        other = TrainConfig(model=model, speed="auto", batch_size=32, steps=AUTO_COMPILE_IMAGES)
        fast = resolve_speed(other, "cpu", 4320)
        assert (fast.speed, fast.compile, fast.routing, fast.recompute) == ("compiled", True, "plain", "all")
        assert resolve_speed(dataclasses.replace(other, steps=10), "cpu", 4320).compile is False
        assert resolve_speed(dataclasses.replace(other, speed="triton"), "cuda", 4320).routing == "plain"
    cnn = resolve_speed(TrainConfig(model="cnn-small", speed="compiled"), "cpu", 4320)
    assert (cnn.compile, cnn.routing) == (True, "plain")  # no EM routing to fuse


def test_train_records_its_speed_and_settings_by_hand_make_it_custom(rendered_root, tmp_path):
    args = [*_tiny_cnn_train(rendered_root), "--steps", "2"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json(tmp_path / "auto" / checkpoints.CONFIG_FILE)
    assert (config.speed, config.compile) == ("reference", False)  # a CNN: plain eager
    clash = CliRunner().invoke(cli, [*args, "--speed", "compiled", "--set", "recompute=all", "--out", "x"])
    assert clash.exit_code == 1 and "--speed compiled sets" in clash.output and "recompute" in clash.output
    from robustcaps.cli.train import _config
    from robustcaps.cli.train import train as train_command

    ctx = train_command.make_context(
        "train", ["--routing", "fused", "--compile", "--out", str(tmp_path / "c")]
    )
    assert _config(ctx, ctx.params).speed == "custom"


def test_evaluation_halves_a_batch_that_runs_out_of_memory(rendered_root, monkeypatch):
    from robustcaps.training import evaluation

    data = load_split(TrainConfig(model="cnn-small", data=str(rendered_root), max_per_part=40))
    model = build_model(TrainConfig(model="cnn-small"))
    whole = evaluation.evaluate(model, data.test, batch_size=64)
    real, sizes = evaluation.predict_views, []

    def short_of_memory(model, images, multi_crop=False):
        sizes.append(len(images))
        if len(images) > 8:
            raise torch.OutOfMemoryError("out of memory (test)")
        return real(model, images, multi_crop)

    monkeypatch.setattr(evaluation, "predict_views", short_of_memory)
    halved = evaluation.evaluate(model, data.test, batch_size=64)
    assert (
        max(sizes) > 8 and halved["error"] == whole["error"] and torch.equal(halved["wrong"], whole["wrong"])
    )


def test_a_new_training_setting_is_one_field_that_reaches_the_cli_the_run_digest_and_config_json(
    rendered_root, tmp_path, monkeypatch
):
    """Adding a setting is adding a field: the option, --set, the digest and config.json follow from it."""
    from robustcaps.cli.train import train_command
    from robustcaps.training.config import run_digest, setting

    extended = dataclasses.make_dataclass(
        "Extended",
        [("new_knob", int, setting(3, shown=True, help="A setting the code has never seen."))],
        bases=(TrainConfig,),
        frozen=True,
    )
    command = train_command(extended)
    assert "--new-knob" in CliRunner().invoke(command, ["--help"]).output
    assert run_digest(extended(new_knob=4)) != run_digest(extended()) == run_digest(extended(device="cpu"))
    fitted = []
    monkeypatch.setattr("robustcaps.training.train.fit", lambda config, out, resume: fitted.append(config))
    args = ["--data", str(rendered_root), "--model", "cnn-small", "--out", str(tmp_path / "run")]
    for given in (["--new-knob", "7"], ["--set", "new_knob=7"]):
        result = CliRunner().invoke(command, [*args, *given])
        assert result.exit_code == 0, result.output
    assert [c.new_knob for c in fitted] == [7, 7] and '"new_knob": 7' in config_json(fitted[0])


def test_a_setting_added_later_keeps_existing_run_folders_at_its_default():
    """named_if_changed: at its default the new field leaves every digest as it was, so runs resume."""
    from robustcaps.training.config import run_digest, setting

    later = dataclasses.make_dataclass(
        "Later", [("late_knob", int, setting(1, named_if_changed=True))], bases=(TrainConfig,), frozen=True
    )
    base = TrainConfig(model="capsnet-small", epochs=3)
    assert run_digest(later(model="capsnet-small", epochs=3)) == run_digest(base)
    assert run_digest(later(model="capsnet-small", epochs=3, late_knob=10)) != run_digest(base)


def test_a_whole_number_given_for_a_float_setting_names_the_same_run():
    """`--set lr_decay_steps=607` (JSON int) and a preset's 607.0 train the same function: one folder."""
    from robustcaps.training.config import run_digest

    as_int = TrainConfig(model="capsnet-small", lr_decay_steps=607, margin_step_scale=50_000)
    as_float = TrainConfig(model="capsnet-small", lr_decay_steps=607.0, margin_step_scale=50_000.0)
    assert run_digest(as_int) == run_digest(as_float) and isinstance(as_int.lr_decay_steps, float)
    assert run_digest(as_int) != run_digest(TrainConfig(model="capsnet-small", lr_decay_steps=608))
    assert TrainConfig(model="capsnet-small", epochs=3).epochs == 3  # int settings stay ints


def test_every_bad_choice_is_one_error_line_before_any_data_is_loaded(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr("robustcaps.training.config.load_split", no_data)
    monkeypatch.setattr("robustcaps.training.loop.load_split", no_data)
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"]
    for bad in (
        ["--model", "nope"],
        ["--split", "sideways"],
        ["--val", "novel"],
        ["--speed", "warp"],
        ["--set", "routing=gathered"],
        ["--set", "loss=hinge"],
        ["--set", "lr_schedule=linear"],
        ["--model-option", "estep=wide"],
    ):
        result = CliRunner().invoke(cli, [*base, *bad])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code in (1, 2) and len(errors) == 1, (bad, result.output)
        assert "Traceback" not in result.output and bad[1].split("=")[-1] in errors[0], (bad, errors)
    assert not (tmp_path / "run").exists()


def test_the_default_recipe_is_the_converged_one_and_the_papers_is_one_option_away():
    from robustcaps.training.config import Recipe

    default, paper = TrainConfig(), TrainConfig(recipe="paper")
    assert default.recipe == Recipe.CONVERGED and build_model(default).config.estep_temperature == 0.25
    assert build_model(default).config.iterations == 2 and build_model(paper).config.iterations == 3
    assert build_model(paper).config.estep_temperature == 1.0
    given = TrainConfig(model_overrides={"iterations": 3})  # a model option given by hand wins
    assert build_model(given).config.iterations == 3
    assert TrainConfig(model="cnn-small").model_settings == {}  # recipes are about routing
    # a config.json from before recipes existed trained HSF18's
    legacy = {k: v for k, v in default.to_dict().items() if k != "recipe"}
    assert TrainConfig.from_dict(legacy).recipe == "paper"
    assert '"recipe": "converged"' in config_json(default)
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--recipe [converged|paper]" in help_text


def test_familiar_checks_inside_an_epoch_add_snapshots_and_change_no_weight(rendered_root, tmp_path):
    config = _config(rendered_root, split="azimuth", batch_size=8, steps=60, familiar_snapshots=True)
    fit(config, tmp_path / "epochs")
    fit(dataclasses.replace(config, familiar_checks_per_epoch=3), tmp_path / "thirds")
    epochs, thirds = (pd.read_csv(tmp_path / d / checkpoints.METRICS_FILE) for d in ("epochs", "thirds"))
    inside = thirds[thirds["val_error"].isna()]
    assert len(inside) >= 2 * len(epochs) - 2 and inside["familiar_error"].notna().all()
    assert inside["train_loss"].isna().all()  # no half-epoch training averages on those rows
    # the epoch-end rows are the same as without the checks: evaluation draws no random numbers
    ends = thirds[thirds["val_error"].notna()].reset_index(drop=True)
    columns = ["step", "train_loss", "val_error", "familiar_error"]
    pd.testing.assert_frame_equal(ends[columns], epochs[columns])
    # a snapshot at each new low, inside epochs too, holding the weights that gave that familiar error
    familiar = thirds.set_index("step")["familiar_error"]
    lows = list(familiar.index[familiar < familiar.cummin().shift(fill_value=math.inf)])
    snapshots = (tmp_path / "thirds" / "checkpoints").glob(f"{checkpoints.SNAPSHOT_PREFIX}*.pt")
    assert sorted(int(p.stem.removeprefix(checkpoints.SNAPSHOT_PREFIX)) for p in snapshots) == lows
    assert set(lows) - set(epochs["step"]), "no snapshot from inside an epoch"
    snapshot = checkpoints.load_run(tmp_path / "thirds", checkpoints.snapshot_name(lows[-1]))
    familiar_part = load_split(snapshot.config).familiar
    assert evaluate(snapshot.model, familiar_part, "cpu")["error"] == familiar[lows[-1]]

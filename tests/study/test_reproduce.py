"""`robustcaps reproduce`: resumable steps, presets, and the whole pipeline end to end, tiny."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robustcaps.cli import cli
from robustcaps.errors import RobustcapsError
from robustcaps.study.presets import PRESETS, get_preset, tiny
from robustcaps.study.steps import Pipeline, Step
from robustcaps.training.checkpoints import load_run
from robustcaps.training.config import TrainConfig


def _counting_step(tmp_path, name, config, counter, depends=()):
    out = tmp_path / f"{name}.txt"

    def run():
        counter[name] = counter.get(name, 0) + 1
        out.write_text(json.dumps(config))

    return Step(name, config, (out,), run, depends)


def test_run_all_says_how_far_it_is_after_every_step(tmp_path):
    counter, log = {}, []
    steps = [_counting_step(tmp_path, name, {}, counter) for name in ("a", "b", "c")]
    Pipeline(tmp_path / "state", log.append).run_all(steps)
    progress = [line for line in log if line.startswith("[") and "/3]" in line]
    assert [line.split("]")[0] for line in progress] == ["[1/3", "[2/3", "[3/3"]
    assert "min left" in progress[0] and "min left" not in progress[-1] and counter == dict(a=1, b=1, c=1)


def test_the_eta_counts_each_step_at_the_time_it_took_when_it_last_ran(tmp_path):
    counter, log = {}, []
    state = tmp_path / "state"
    state.mkdir()
    for name, seconds in (("b", 600.0), ("c", 1200.0)):  # finished earlier, under another config
        (state / f"{name}.json").write_text(json.dumps({"config": {"old": 1}, "seconds": seconds}))
    steps = [_counting_step(tmp_path, name, {"new": 1}, counter) for name in ("a", "b", "c")]
    Pipeline(state, log.append).run_all(steps)
    progress = [line for line in log if line.startswith("[") and "/3]" in line]
    assert progress[0].endswith("about 30 min left")  # not 2 × the instant step a's pace
    assert counter == dict(a=1, b=1, c=1)  # the old records only informed the ETA


def test_finished_steps_are_skipped_and_changed_ones_rerun(tmp_path):
    counter, log = {}, []

    def run_all(a_config):
        pipeline = Pipeline(tmp_path / "state", log.append)
        pipeline.run(_counting_step(tmp_path, "a", a_config, counter))
        pipeline.run(_counting_step(tmp_path, "b", {"y": 1}, counter, depends=("a",)))
        pipeline.run(_counting_step(tmp_path, "c", {"z": 1}, counter))

    run_all({"x": 1})
    run_all({"x": 1})
    assert counter == {"a": 1, "b": 1, "c": 1}
    (tmp_path / "c.txt").unlink()  # a lost output is made again
    run_all({"x": 1})
    assert counter == {"a": 1, "b": 1, "c": 2}
    run_all({"x": 2})  # a changed setting reruns the step and every step that depends on it
    assert counter == {"a": 2, "b": 2, "c": 2}


def test_pipelines_sharing_the_steps_run_each_once_and_after_what_it_needs(tmp_path):
    import threading
    import time

    events, lock = [], threading.Lock()

    def step(name, depends=(), seconds=0.2):
        out = tmp_path / f"{name}.txt"

        def run():
            with lock:
                events.append(("start", name, threading.current_thread().name))
            time.sleep(seconds)
            out.write_text(name)
            with lock:
                events.append(("end", name, threading.current_thread().name))

        return Step(name, {}, (out,), run, depends)

    steps = [step("a"), step("b", ("a",)), step("c"), step("d", ("b", "c"))]
    logs = {name: [] for name in ("one", "two")}
    pipelines = {name: Pipeline(tmp_path / "state", logs[name].append) for name in logs}
    threads = [
        threading.Thread(target=pipelines[n].run_shared, args=(steps, 2), kwargs={"poll": 0.05}, name=n)
        for n in logs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [name for kind, name, _ in events if kind == "start"]
    assert sorted(started) == ["a", "b", "c", "d"], "every step ran exactly once"
    assert len({who for *_, who in events}) == 2, "both pipelines took steps"
    order = [(kind, name) for kind, name, _ in events]
    for name, needs in (("b", "a"), ("d", "b"), ("d", "c")):
        assert order.index(("end", needs)) < order.index(("start", name))
    for name, log in logs.items():  # each logs every step, its own as run and the other's as done there
        ran = {line.split()[2] for line in log if line.startswith("[run ]")}
        elsewhere = {line.split()[1].rstrip(":") for line in log if "by another job" in line}
        assert ran | elsewhere == {"a", "b", "c", "d"} and not ran & elsewhere, name
    assert not list((tmp_path / "state").glob("*.claim")), "no claim is left behind"


def test_a_dead_jobs_claim_is_taken_over_and_a_live_ones_is_not(tmp_path):
    import subprocess
    import sys

    step = Step("s", {}, (tmp_path / "s.txt",), lambda: None)
    pipeline = Pipeline(tmp_path / "state", lambda _: None)
    (tmp_path / "state").mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    (tmp_path / "state" / "s.claim").write_text(f"{int(finished.stdout)} gone")
    assert pipeline.claim(step)  # its process has exited
    assert not Pipeline(tmp_path / "state", lambda _: None).claim(step)  # this one holds it, alive
    pipeline.release(step)
    assert not (tmp_path / "state" / "s.claim").exists()


def test_a_crashed_step_is_not_marked_finished(tmp_path):
    def crash():
        (tmp_path / "half.txt").write_text("half")
        raise RuntimeError("killed")

    pipeline = Pipeline(tmp_path / "state", lambda _: None)
    with pytest.raises(RuntimeError):
        pipeline.run(Step("s", {}, (tmp_path / "half.txt",), crash))
    counter = {}
    step = _counting_step(tmp_path, "s", {}, counter)
    Pipeline(tmp_path / "state", lambda _: None).run(Step("s", {}, (tmp_path / "half.txt",), step.run))
    assert counter == {"s": 1}


def test_presets():
    quick = get_preset("quick")
    assert quick.demo and quick.models[:2] == ("cnn-small", "capsnet-small")
    paper = get_preset("paper")
    assert not paper.demo and paper.models == ("cnn", "capsnet") and paper.capsnet.batch_size == 64
    assert paper.capsnet.margin_step_scale == 50_000 and max(paper.attack.eps) == 0.5
    assert (paper.capsnet.compile, paper.capsnet.routing, paper.capsnet.eval_every) == (True, "fused", 10)
    # the paper preset's attacks craft on the compiled fused copy; the others on the model as loaded
    from robustcaps.study.attacks import attack_configs

    assert {c.crafting for c in attack_configs(paper, True, "cuda").values()} == {"compiled"}
    assert {get_preset(name).attack.crafting for name in ("quick", "gpu", "tiny")} == {"plain"}
    assert get_preset("gpu").capsnet.model == "capsnet" and set(PRESETS) >= {"quick", "gpu", "paper"}
    for name in ("quick", "gpu", "paper"):  # β_a calibration: agreement rewarded from the start
        preset = get_preset(name)
        # short runs route with 2 iterations (presets.CAPSNET_SHORT_RUN); the paper preset keeps HSF18's 3
        iterations = {"iterations": 2} if name != "paper" else {}
        # the CPU demo also takes the converged recipe's softer E-step
        temperature = {"estep_temperature": 0.25} if name == "quick" else {}
        assert preset.capsnet.model_settings == {"calibrate": "beta_a", **iterations, **temperature}
        assert not preset.cnn.model_settings
    # the other capsule families join the CPU demo and the GPU preset as presets of their own, so that
    # `quick` and `gpu` keep their budgets; only on the GPU are they compiled
    families, gpu_families = get_preset("families"), get_preset("gpu-families")
    assert families == quick.replace(name="families", more_capsules=families.more_capsules)
    assert families.models == ("cnn-small", "capsnet-small", "dynamic-capsnet-small", "sr-capsnet-small")
    assert gpu_families.capsule_models[1:] == ("dynamic-capsnet", "sr-capsnet")
    assert not get_preset("gpu").more_capsules and not families.config_for("sr-capsnet-small").model_overrides
    from robustcaps.study.viewpoint import train_config

    sr = train_config(gpu_families, "sr-capsnet", "full", "data", "cuda")
    assert (sr.compile, sr.routing, sr.steps) == (True, "plain", gpu_families.capsnet.steps)
    assert train_config(families, "dynamic-capsnet-small", "full", "data", "cpu").compile is False
    # RobustBench's headline number in the presets that report robustness
    assert all("autoattack" in get_preset(name).untargeted_attacks for name in ("gpu", "paper"))
    # the converged preset: every family to its plateau on held-out instances, the converged recipe
    converged = get_preset("converged")
    assert {c.val for c in converged.runs} == {"instances"} and min(c.patience for c in converged.runs) > 0
    assert converged.capsnet.model_settings["estep_temperature"] == 0.25 and not converged.demo
    assert converged.attack.n >= 300 and "autoattack" in converged.untargeted_attacks
    assert converged.data_size == "full"  # the small stand-in left capsnet-small underfitted
    with pytest.raises(RobustcapsError, match="--preset"):
        get_preset("huge")


def test_preset_runs_are_named_by_the_digest_of_the_trainconfig_they_train(tmp_path):
    from robustcaps.study.viewpoint import run_dir, train_config

    gpu = get_preset("gpu")
    cnn, caps = (train_config(gpu, m, "full", tmp_path, "cuda") for m in gpu.models)
    assert (caps.compile, caps.routing) == (True, "fused") and (cnn.compile, cnn.routing) == (False, "plain")
    quick = get_preset("quick")
    cnn, caps = (train_config(quick, m, "full", tmp_path, "cpu") for m in quick.models)
    # the CPU presets take the fastest compiled path of the device they run on (resolve_speed)
    assert caps.speed == "compiled" and (cnn.compile, cnn.routing) == (False, "plain")
    assert caps.lr_schedule == cnn.lr_schedule == "cosine"  # one training protocol for both families
    assert caps.val == cnn.val == "pairs"  # the demo trains on all five instances per category
    assert train_config(gpu, "cnn", "full", tmp_path, "cpu").val == "instances"
    # any setting that changes what is trained trains into another run directory, in any role ...
    for changes in ({"lr_schedule": "exponential"}, {"eval_every": 10}, {"seed": 1}, {"steps": 3}):
        changed = quick.replace_runs(**changes)
        for model in quick.models:
            assert run_dir(tmp_path, quick, model, "azimuth") != run_dir(tmp_path, changed, model, "azimuth")
    deeper = quick.replace(capsnet=dataclasses.replace(quick.capsnet, model_overrides={"iterations": 3}))
    assert run_dir(tmp_path, quick, "capsnet-small", "full") != run_dir(
        tmp_path, deeper, "capsnet-small", "full"
    )
    assert run_dir(tmp_path, quick, "cnn-small", "full") == run_dir(tmp_path, deeper, "cnn-small", "full")
    # ... and the stopping target too; how the same function is computed (speed, device, data path) does not
    targeted = run_dir(tmp_path, quick, "capsnet-small", "azimuth", target_familiar_error=0.1)
    assert targeted != run_dir(tmp_path, quick, "capsnet-small", "azimuth")
    plain = quick.replace(capsnet=dataclasses.replace(quick.capsnet, speed="reference"))
    assert run_dir(tmp_path, quick, "capsnet-small", "full") == run_dir(
        tmp_path, plain, "capsnet-small", "full"
    )
    paper = get_preset("paper")
    assert {train_config(paper, m, "azimuth", tmp_path, "cuda").eval_every for m in paper.models} == {10}


def test_cli_bad_data_is_one_line(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "reproduce",
            "--preset",
            "tiny",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "results"),
            "--runs",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: --data") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "README.md").exists()


@pytest.fixture
def data_root(request, tmp_path_factory):
    """The shared tiny rendered set (tests/conftest.py), or a tiny render of our own if it is absent."""
    try:
        return request.getfixturevalue("rendered_root")
    except pytest.FixtureLookupError:
        from robustcaps.data.standin.render import render_dataset

        return render_dataset(tmp_path_factory.mktemp("tiny"), size="tiny", progress=False)


@pytest.mark.slow
def test_tiny_reproduce_end_to_end_then_resume(data_root, tmp_path):
    from robustcaps.study.pipeline import reproduce

    results, runs, log = tmp_path / "results", tmp_path / "runs", []
    preset = tiny().replace_runs(steps=2, max_per_part=20)
    preset = preset.replace(attack=dataclasses.replace(preset.attack, n=5))
    readme = reproduce(
        preset, data=str(data_root), results_dir=results, runs_dir=runs, device="cpu", echo=log.append
    )
    text = readme.read_text()
    assert "demo" in text and "rendered stand-in" in text
    for name in ("fig3_fgsm_bim", "all_attacks", "familiar_vs_novel", "training_curves"):
        assert (results / "figures" / f"{name}.png").exists() and (
            results / "figures" / f"{name}.pdf"
        ).exists()
    table2 = pd.concat(pd.read_csv(results / "viewpoint" / f"{s}.csv") for s in ("azimuth", "elevation"))
    assert set(table2["family"]) == {"capsnet", "cnn"} and table2["novel_error"].between(0, 1).all()
    cnn_rows = table2[table2["family"] == "cnn"]  # paired counts against the capsules on the same images
    disagree = cnn_rows["novel_only_capsules_wrong"] + cnn_rows["novel_only_cnn_wrong"]
    assert (disagree <= cnn_rows["n_novel"]).all()  # NaN (counts missing) fails
    for split in ("azimuth", "elevation"):  # the capsules' target is the CNN's measured familiar error
        (caps_dir,) = runs.glob(f"capsnet-small-{split}-*")
        caps = json.loads((caps_dir / "config.json").read_text())
        cnn_row = table2[(table2["split"] == split) & (table2["family"] == "cnn")].iloc[0]
        assert caps["target_familiar_error"] == pytest.approx(cnn_row["familiar_error"])
    summary = pd.concat(pd.read_csv(p) for p in results.glob("attacks/*/summary.csv"))
    assert {"fgsm", "bim", "bim-vote", "worst"} <= set(summary["attack"])
    assert (summary["source"] == "cnn-small").any()  # transfer from the CNN to the capsules
    assert summary["targeted"].any() and (results / "attacks" / "capsnet-small" / "checks.csv").exists()
    assert (results / "attacks" / "cnn-small" / "per_example.csv").exists()  # for paired comparisons
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["demo"] and provenance["dataset_identity"]["kind"] == "rendered"
    # the exported full-split capsnet is the trained one, and its README line says how to attack it
    (trained,) = runs.glob("capsnet-small-full-*")
    exported = load_run(results / "models" / "capsnet-small-full", data=data_root)
    for name, weight in load_run(trained).model.state_dict().items():
        assert torch.equal(exported.model.state_dict()[name], weight), name
    assert f"robustcaps attack {results / 'models' / 'capsnet-small-full'} --out SWEEP" in text
    ran = [line for line in log if line.startswith("[run ]")]
    assert len(ran) >= 9

    log.clear()
    reproduce(preset, data=str(data_root), results_dir=results, runs_dir=runs, device="cpu", echo=log.append)
    assert not [line for line in log if line.startswith("[run ]")]
    assert sum(line.startswith("[skip]") for line in log) == len(ran)


def test_regenerate_notes_name_data_only_when_it_is_not_the_presets_own_stand_in(
    rendered_root, tmp_path, monkeypatch
):
    import shutil

    from robustcaps.data.standin.render import default_data_path
    from robustcaps.study.pipeline import training_steps

    monkeypatch.setenv("ROBUSTCAPS_CACHE", str(tmp_path / "cache"))
    cached = shutil.copytree(rendered_root, default_data_path("tiny"))
    for root, data in ((cached, ""), (rendered_root, f" --data {rendered_root}")):
        steps = {s.name: s for s in training_steps(tiny(), root, tmp_path, tmp_path / "runs", "cpu", print)}
        note = steps["viewpoint-azimuth"].run.args[6]
        assert note == f"Regenerate: robustcaps viewpoint --split azimuth --preset tiny{data}"


def test_the_resolved_device_is_a_spelling_train_config_accepts(monkeypatch):
    # On a GPU machine the trainer resolves "auto"/"cuda" to cuda:<local rank>; the pipeline passes the
    # device on to TrainConfig, which accepts the type only (a GPU run once failed on "cuda:0").
    import torch

    import robustcaps.study.pipeline
    from robustcaps.study.pipeline import device_type
    from robustcaps.training import TrainConfig

    monkeypatch.setattr(
        robustcaps.study.pipeline, "trainer_device", lambda name, world: torch.device("cuda", 0)
    )
    device = device_type("auto")
    assert device == "cuda" and TrainConfig(model="capsnet", device=device).device == "cuda"


def test_refit_trains_every_instance_for_the_epochs_validation_chose(rendered_root, tmp_path):
    from robustcaps.study.pipeline import chosen_epoch, refit_config, refit_run
    from robustcaps.training import fit
    from robustcaps.training.config import load_split

    held_out = TrainConfig(
        model="cnn-small", data=str(rendered_root), epochs=4, batch_size=16, lr_decay_steps=15.0, device="cpu"
    )
    fit(held_out, tmp_path / "held-out")
    metrics = pd.read_csv(tmp_path / "held-out" / "metrics.csv")
    epoch, val_error = chosen_epoch(tmp_path / "held-out")
    assert (epoch, val_error) == (
        int(metrics["epoch"][metrics["val_error"].idxmin()]),
        metrics["val_error"].min(),
    )
    config = refit_config(tmp_path / "held-out")
    assert (config.val, config.epochs, config.patience) == ("none", epoch, 0)
    refit_data, held_out_data = load_split(config), load_split(held_out)
    # every instance trains, none validates, and the lr decays as much per epoch as in the held-out run
    assert len(refit_data.val) == 0 and len(refit_data.train) == len(held_out_data.train) + len(
        held_out_data.val
    )
    per_epoch = len(refit_data.train) // 16 / (len(held_out_data.train) // 16)
    assert config.lr_decay_steps == pytest.approx(15.0 * per_epoch) and per_epoch > 1
    refit_run(tmp_path / "held-out", tmp_path / "refit")
    refit_metrics = pd.read_csv(tmp_path / "refit" / "metrics.csv")
    assert (
        list(refit_metrics["epoch"]) == list(range(1, epoch + 1)) and refit_metrics["val_error"].isna().all()
    )
    best, last = (load_run(tmp_path / "refit", which) for which in ("best", "last"))
    assert best.step == last.step  # with nothing to validate on, the run's model is its last epoch
    with pytest.raises(RobustcapsError, match="patience=2: needs validation data"):
        dataclasses.replace(config, patience=2)


def test_a_refit_preset_reports_and_attacks_the_refit_runs_each_after_its_own(rendered_root, tmp_path):
    from robustcaps.study.pipeline import build_steps

    preset = tiny().replace(refit=True)
    steps = {s.name: s for s in build_steps(preset, rendered_root, tmp_path, tmp_path, "cpu", print)}
    assert steps["refit-capsnet-small-full"].depends == ("train-capsnet-small-full",)
    # an attack waits for (and reruns after) its victim's refit and the transfer source's, nothing else
    assert steps["attack-capsnet-small"].depends == ("refit-cnn-small-full", "export-capsnet-small")
    assert steps["attack-cnn-small"].depends == ("refit-cnn-small-full", "export-cnn-small")
    assert steps["export-capsnet-small"].depends == ("refit-capsnet-small-full",)


def test_every_capsule_family_goes_through_the_same_protocol(data_root, tmp_path):
    from robustcaps.study.pipeline import reproduce

    results = tmp_path / "results"
    more = ("dynamic-capsnet-small", "sr-capsnet-small")
    # the converged preset's protocol: epochs chosen on a held-out instance, then a refit on all of them
    base = tiny().replace_runs(steps=None, epochs=2, max_per_part=20).replace(refit=True)
    runs = tuple(dataclasses.replace(base.capsnet, model=m, model_overrides={}) for m in more)
    preset = base.replace(more_capsules=runs, attack=dataclasses.replace(base.attack, n=5))
    readme = reproduce(  # in two processes, as `reproduce --jobs 2`
        preset,
        data=str(data_root),
        results_dir=results,
        runs_dir=tmp_path / "runs",
        device="cpu",
        echo=lambda _: None,
        jobs=2,
    )
    clean = pd.read_csv(results / "clean" / "clean_error.csv")
    assert set(clean["family"]) == {"capsnet", "cnn", "dynamic", "self-routing"}
    for split in ("azimuth", "elevation"):
        table = pd.read_csv(results / "viewpoint" / f"{split}.csv")
        paper = table[table["protocol"] == "paper"].set_index("model")
        assert set(paper.index) == {"cnn-small", "capsnet-small", *more}
        cnn_familiar = paper.loc["cnn-small", "familiar_error"]
        for model in more:  # stopped at the same CNN's familiar error, paired with it on the novel images
            assert paper.loc[model, "target_familiar_error"] == pytest.approx(cnn_familiar)
            assert paper.loc[model, "matched_to"] == "cnn-small"
            assert not paper.loc[model, ["novel_only_capsules_wrong", "novel_only_cnn_wrong"]].isna().any()
        assert (paper["family"] == "cnn").sum() == 1  # one CNN row, not one per capsule family
    attacked = {p.parent.name: pd.read_csv(p) for p in results.glob("attacks/*/summary.csv")}
    assert {"dynamic-capsnet-small", "sr-capsnet-small", "dynamic-capsnet-small-targeted"} <= set(attacked)
    assert "bim-vote" in set(attacked["dynamic-capsnet-small"]["attack"])  # uniform coupling: a vote head
    assert "bim-vote" not in set(attacked["sr-capsnet-small"]["attack"])  # self-routing has none
    assert (attacked["sr-capsnet-small"]["source"] == "cnn-small").any()  # transfer from the same CNN
    families = pd.read_csv(results / "tables" / "families.csv")
    assert list(families["model"]) == ["capsnet-small", "dynamic-capsnet-small", "sr-capsnet-small"]
    assert families["novel azimuth error vs CNN"].str.contains("to").all()
    text = readme.read_text()
    assert "Every capsule family against the CNN" in text and "beat the CNN" in text
    assert (results / "models" / "sr-capsnet-small-full" / "checkpoints" / "best.pt").exists()
    steps = json.loads((results / "provenance.json").read_text())["steps"]
    assert any(s["status"] == "ran by another job" for s in steps) and any(
        s["status"] == "ran" for s in steps
    )
    held_out = pd.read_csv(results / "clean" / "held_out.csv").set_index("model")
    assert set(held_out.index) == {"cnn-small", "capsnet-small", *more}
    assert held_out["epochs"].between(1, 2).all() and held_out["refit_test_error"].between(0, 1).all()
    for model in held_out.index:  # the refit model is the one reported, exported and attacked
        (refit,) = (tmp_path / "runs").glob(f"{model}-refit-*")
        assert json.loads((refit / "config.json").read_text())["val"] == "none"
        exported = load_run(results / "models" / f"{model}-full", data=data_root).model.state_dict()
        for name, weight in load_run(refit).model.state_dict().items():
            assert torch.equal(exported[name], weight), name
        test = clean[(clean["model"] == model) & (clean["split"] == "full") & (clean["crops"] == 1)]
        assert test["error"].item() == pytest.approx(held_out.loc[model, "refit_test_error"])

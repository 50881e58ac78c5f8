"""The report from fixture CSVs in the schemas the other modules write: every file, and the numbers in it."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.collections import PathCollection

from robustcaps.cli import cli
from robustcaps.errors import RobustcapsError
from robustcaps.report.findings import findings_sections
from robustcaps.report.readme import write_report
from robustcaps.report.tables import load_results

EPS = [0.0, 0.1, 0.25, 0.5]
# Distinctive values so the tables can be searched for them.
ACC = {"capsnet-small": [0.9311, 0.8123, 0.7034, 0.6045], "cnn-small": [0.9422, 0.5567, 0.2078, 0.0389]}


def _summary(model: str, source: str = "") -> list[dict]:
    rows = []
    for attack in ("fgsm", "bim", "pgd", "vote" if "caps" in model else "apgd-ce"):
        for targeted in (False, True):
            for eps, acc in zip(EPS, ACC[model], strict=True):
                value = acc - (0.01 if attack != "fgsm" else 0.0)
                rows.append(
                    {
                        "model": model,
                        "run_dir": f"runs/{model}",
                        "attack": attack,
                        "targeted": targeted,
                        "eps_pixel": eps * 0.2,
                        "eps_std": eps,
                        "units": "std",
                        "metric": "success_rate" if targeted else "accuracy",
                        "value": round(1 - value, 4) if targeted else round(value, 4),
                        "n": 100,
                        "loss": "ce",
                        "steps": 10,
                        "restarts": 1,
                        "source": source,
                        "seed": 0,
                        "sigma_mean": 0.2,
                        "git_commit": "abc1234",
                        "device": "cpu",
                        "dataset": "rendered seed 0",
                    }
                )
    # the attacks also write the clean pseudo-attack and the integrity checks' extra PGD cells.
    base = {**rows[0], "targeted": False, "metric": "accuracy", "eps_std": 0.0, "eps_pixel": 0.0}
    rows.append({**base, "attack": "clean", "value": ACC[model][0]})
    rows.append({**base, "attack": "pgd", "role": "check", "eps_std": 2.5, "eps_pixel": 0.5, "value": 0.0123})
    return rows


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    for model in ACC:
        attack_dir = root / "attacks" / model
        attack_dir.mkdir(parents=True)
        pd.DataFrame(_summary(model)).to_csv(attack_dir / "summary.csv", index=False)
        pd.DataFrame(
            [
                {"model": model, "check": "monotone_in_eps", "passed": True, "detail": "ok"},
                {
                    "model": model,
                    "check": "gradients_nonzero",
                    "passed": "caps" not in model,
                    "detail": "zero grads 73%",
                },
            ]
        ).to_csv(attack_dir / "checks.csv", index=False)
    (root / "clean").mkdir()
    pd.DataFrame(
        [
            {
                "model": "capsnet-small",
                "family": "capsnet",
                "split": "full",
                "part": "test",
                "crops": 1,
                "error": 0.0689,
                "n": 500,
            },
            {
                "model": "capsnet-small",
                "family": "capsnet",
                "split": "full",
                "part": "test",
                "crops": 13,
                "error": 0.0577,
                "n": 500,
            },
            {
                "model": "cnn-small",
                "family": "cnn",
                "split": "full",
                "part": "test",
                "crops": 1,
                "error": 0.0578,
                "n": 500,
            },
            {
                "model": "cnn-small",
                "family": "cnn",
                "split": "full",
                "part": "test",
                "crops": 13,
                "error": 0.0466,
                "n": 500,
            },
        ]
    ).to_csv(root / "clean" / "clean_error.csv", index=False)
    (root / "viewpoint").mkdir()
    pd.DataFrame(
        [
            {
                "split": "azimuth",
                "model": "cnn-small",
                "family": "cnn",
                "familiar_error": 0.0412,
                "novel_error": 0.2233,
                "familiar_gap": 0.0021,
                "target_familiar_error": 0.0412,
                "n_familiar": 300,
                "n_novel": 600,
            },
            {
                "split": "azimuth",
                "model": "capsnet-small",
                "family": "capsnet",
                "familiar_error": 0.0433,
                "novel_error": 0.1544,
                "familiar_gap": 0.0021,
                "target_familiar_error": 0.0412,
                "n_familiar": 300,
                "n_novel": 600,
            },
        ]
    ).to_csv(root / "viewpoint" / "azimuth.csv", index=False)
    (root / "training").mkdir()
    pd.DataFrame(
        [
            {
                "run": f"{m}-full",
                "model": m,
                "family": m.split("-")[0],
                "split": "full",
                "epoch": e,
                "step": 10 * e,
                "train_loss": 1.0 / (e + 1),
                "train_error": 0.5 / (e + 1),
                "val_error": 0.6 / (e + 1),
            }
            for m in ACC
            for e in range(3)
        ]
    ).to_csv(root / "training" / "metrics.csv", index=False)
    (root / "provenance.json").write_text(
        json.dumps(
            {
                "preset": "quick",
                "demo": True,
                "command": "robustcaps reproduce --preset quick",
                "device": "cpu",
                "device_name": "CPU x86_64 x2 (testhost)",
                "git_commit": "abc1234def",
                "dataset_identity": {
                    "kind": "rendered",
                    "seed": 0,
                    "options": {"size": "small"},
                    "generator_version": "1.0",
                    "sha256": {"smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat": "feedbeef0123456789"},
                },
                "steps": [{"step": "train-capsnet-small-full", "status": "ran", "seconds": 312.0}],
                "wall_seconds": 400.0,
            }
        )
    )
    return root


def test_report_writes_every_file_with_the_fixture_numbers(results_dir):
    readme = write_report(results_dir)
    text = readme.read_text()
    for name in ("fig3_fgsm_bim", "all_attacks", "familiar_vs_novel", "training_curves"):
        for suffix in (".png", ".pdf"):
            path = results_dir / "figures" / f"{name}{suffix}"
            assert path.stat().st_size > 1000, path
        assert f"figures/{name}.png" in text
    for name in ("clean_error", "table2", "untargeted", "targeted", "stronger", "checks"):
        assert (results_dir / "tables" / f"{name}.csv").exists()
        assert (results_dir / "tables" / f"{name}.md").read_text() in text
    assert "0.812" in text and "0.557" in text  # untargeted FGSM at ε=0.1, both models
    assert "22.3%" in text and "15.4%" in text and "20.0%" in text  # novel errors, ours and the paper's
    assert (
        "6.9%" in text and "5.8%" in text and "1.4%" in text
    )  # clean error 1 and 13 crops, paper multi-crop
    assert "vote" in text and "FAIL" in text
    assert "| pgd |  | capsnet-small | untargeted | check | accuracy |" in text and "0.012" in text
    assert "CPU x86_64 x2 (testhost)" in text and "abc1234def" in text
    assert "robustcaps reproduce --preset quick" in text
    assert "generator 1.0, seed 0, size small, training-dat sha256 feedbeef0123" in text
    assert "train-capsnet-small-full 312 s" in text
    written = {path: path.read_bytes() for path in results_dir.rglob("*") if path.is_file()}
    write_report(results_dir)  # the same numbers give the same bytes (PDFs without a creation date)
    assert {path: path.read_bytes() for path in results_dir.rglob("*") if path.is_file()} == written


def test_a_run_kept_in_a_subfolder_is_summarised_in_the_top_readme(results_dir, tmp_path):
    gpu = results_dir / "gpu"
    shutil.copytree(results_dir, tmp_path / "copy")
    shutil.move(tmp_path / "copy", gpu)
    provenance = json.loads((gpu / "provenance.json").read_text())
    provenance.update(preset="gpu", demo=False, device="cuda", device_name="NVIDIA H200", git_commit="fe11")
    (gpu / "provenance.json").write_text(json.dumps(provenance))
    summary = gpu / "attacks" / "capsnet-small" / "summary.csv"
    pd.read_csv(summary).assign(value=lambda f: (f["value"] * 0.5).round(4)).to_csv(summary, index=False)
    text = write_report(results_dir).read_text()
    section = text.split("## Other runs in this folder\n\n")[1].split("\n## ")[0]
    assert section.startswith("### Preset `gpu` on NVIDIA H200: [gpu/README.md](gpu/README.md)")
    # the subfolder's own verdict, from its own numbers, not the demo's; its README is linked, not repeated
    verdict = findings_sections(load_results(gpu), "rendered").split("\n\n")[0]
    assert verdict.startswith("**Verdict.**") and verdict in section and "### Attacks" not in section
    assert verdict != findings_sections(load_results(results_dir), "rendered").split("\n\n")[0]
    assert "`robustcaps report --results " + str(gpu) + "`" in section and "Commit: fe11." in section
    assert not (gpu / "README.md").exists()  # the subfolder's own report is left to its own command
    gpu_text = write_report(gpu).read_text()
    assert "Other runs" not in gpu_text


def test_the_converged_run_leads_the_top_readme_above_the_demo(results_dir, tmp_path):
    converged = results_dir / "converged"
    shutil.copytree(results_dir, tmp_path / "copy")
    shutil.move(tmp_path / "copy", converged)
    provenance = json.loads((converged / "provenance.json").read_text())
    provenance.update(preset="converged", demo=False, git_commit="c0ffee")
    (converged / "provenance.json").write_text(json.dumps(provenance))
    summary = converged / "attacks" / "capsnet-small" / "summary.csv"
    pd.read_csv(summary).assign(value=lambda f: (f["value"] * 0.5).round(4)).to_csv(summary, index=False)
    text = write_report(results_dir).read_text()
    headline = text.split("## Headline: the converged run ([converged/README.md](converged/README.md))\n")[1]
    headline, demo = headline.split("## This folder's run (preset `quick`)\n")
    verdict = findings_sections(load_results(converged), "rendered").split("\n\n")[0]
    assert verdict in headline and "### Leaderboard" in headline and "Commit: c0ffee." in headline
    assert verdict not in demo and "**Verdict.**" in demo  # the demo keeps its own findings, below
    assert "Other runs" not in text  # the converged run is not summarised twice


def test_a_full_size_run_on_rendered_data_is_not_called_a_demo(results_dir):
    provenance = json.loads((results_dir / "provenance.json").read_text())
    provenance.update(preset="gpu", demo=False, device="cuda", preset_settings={"capsnet_steps": 600})
    (results_dir / "provenance.json").write_text(json.dumps(provenance))
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "demo" not in paragraph and "preset `gpu` on the rendered stand-in" in paragraph
    assert "at most 600 capsule steps" in paragraph and "not a replication" in paragraph
    assert "iterations" not in paragraph  # the paper's capsule network: nothing to declare
    overrides = [["calibrate", "beta_a"], ["iterations", 2]]  # as asdict(preset) reaches the JSON
    provenance["preset_settings"] |= {"capsnet_overrides": overrides}
    (results_dir / "provenance.json").write_text(json.dumps(provenance))
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "use 2 EM routing iterations, not the paper's 3" in paragraph
    assert "temperature" not in paragraph
    provenance["preset_settings"]["capsnet_overrides"] = [["iterations", 3], ["estep_temperature", 0.25]]
    (results_dir / "provenance.json").write_text(json.dumps(provenance))
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "use 0.25 as the E-step temperature T (R ∝ a p^T), not the paper's 1.0" in paragraph
    assert "iterations" not in paragraph


def test_a_reverse_match_is_tabled_plotted_and_worded_apart_from_the_papers_rows(results_dir):
    path = results_dir / "viewpoint" / "azimuth.csv"
    paper = pd.read_csv(path).assign(protocol="paper", checkpoint=["best", "last"])
    reverse = paper.iloc[[0]].assign(
        protocol="reverse",
        checkpoint="familiar-step0000150",
        familiar_error=0.0431,
        novel_error=0.2511,
        familiar_gap=0.0002,
        paper_familiar_error=float("nan"),
        paper_novel_error=float("nan"),
    )
    pd.concat([paper, reverse]).to_csv(path, index=False)
    text = write_report(results_dir).read_text()
    table = (results_dir / "tables" / "table2.md").read_text().splitlines()
    row = next(line for line in table if "step 150" in line)
    assert "CNN stopped at the capsules' (step 150)" in row and "25.1%" in row and "20.0%" not in row
    assert sum("capsules stopped at the CNN's" in line for line in table) == 2
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "better than the CNN by 6.9 points" in paragraph  # the paper's pair is still the headline
    assert (
        "Stopping the CNN instead at its first checkpoint whose familiar error reached the capsules' "
        "(step 150: familiar 4.3%, gap +0.0 points), its novel error was 25.1%: the capsules' 15.4% is "
        "better than the CNN by 9.7 points (95% interval 5.1 to 14.2, on 600 / 600 images)." in paragraph
    )
    # with the images only one model got wrong (both see the same ones) the comparison is paired
    frame, discordant = pd.read_csv(path), ["novel_only_capsules_wrong", "novel_only_cnn_wrong"]
    frame.loc[frame["protocol"] == "reverse", discordant] = [20, 78]
    frame.to_csv(path, index=False)
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert (
        "15.4% is better than the CNN by 9.7 points (95% interval 6.5 to 12.9, on the same 600 images, 20 of "
        "which only the capsules and 78 only the CNN got wrong)." in paragraph
    )
    # the same gap on 60 novel images each is within what chance gives
    for split_csv in results_dir.glob("viewpoint/*.csv"):
        frame = pd.read_csv(split_csv).drop(columns=discordant)
        frame.assign(n_novel=60).to_csv(split_csv, index=False)
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "15.4% is not distinguishable from the CNN's on 60 / 60 images (difference -9.7" in paragraph
    assert "figures/familiar_vs_novel.png" in text


def test_the_leaderboards_cnn_cell_is_the_cnn_matched_to_the_em_network(results_dir):
    from robustcaps.report.compare import leaderboard

    path = results_dir / "viewpoint" / "azimuth.csv"
    paper = pd.read_csv(path).assign(protocol="paper", matched_to=["", "cnn-small"])
    cnn = paper[paper["family"] == "cnn"]
    reverse = [  # the dynamic network's match comes first in the file; the EM network's lies closer
        cnn.assign(protocol="reverse", matched_to=m, novel_error=e, familiar_gap=0.0)
        for m, e in (("dynamic-capsnet-small", 0.3333), ("capsnet-small", 0.2511))
    ]
    pd.concat([paper, *reverse]).to_csv(path, index=False)
    board = leaderboard(load_results(results_dir)).set_index("model")["novel azimuth error"]
    assert board["cnn-small"] == "25.1% (stopped at capsnet-small's familiar error)"
    assert (
        board["capsnet-small"]
        == f"{100 * paper.loc[paper['family'] == 'capsnet', 'novel_error'].item():.1f}%"
    )


def test_familiar_vs_novel_keeps_each_sources_marker_on_every_panel(results_dir, monkeypatch):
    from robustcaps.paper_results import TABLE2
    from robustcaps.report import plots

    azimuth = load_results(results_dir)["viewpoint"]
    reverse = azimuth.iloc[[0]].assign(protocol="reverse", familiar_error=0.05, novel_error=0.3)
    elevation = azimuth.assign(split="elevation")  # no reverse row on this split
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem, footer: figures.append(fig) or [])
    plots.plot_familiar_novel(pd.concat([azimuth, reverse, elevation]), results_dir / "f", "footer")

    def marker_at(ax, x, y):  # the marker path of the point drawn at (x, y)
        (points,) = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
        at = [i for i, xy in enumerate(points.get_offsets()) if tuple(xy) == pytest.approx((x, y))]
        return points.get_paths()[at[0]].vertices.round(6).tolist()

    panels = dict(zip(("azimuth", "elevation"), figures[0].axes, strict=False))
    cnn = {split: TABLE2[(split, "cnn")] for split in panels}
    paper = {s: marker_at(ax, cnn[s]["familiar_error"], cnn[s]["novel_error"]) for s, ax in panels.items()}
    assert paper["azimuth"] == paper["elevation"]
    assert marker_at(panels["azimuth"], 0.05, 0.3) != paper["azimuth"]
    ours = marker_at(panels["elevation"], 0.0433, 0.1544)
    assert ours not in (paper["elevation"], marker_at(panels["azimuth"], 0.05, 0.3))
    # our points carry 95% error bars (one bar per point and axis), the paper's carry none
    bars = [c for c in panels["elevation"].collections if not isinstance(c, PathCollection)]
    assert sum(len(c.get_segments()) for c in bars) == 2 * len(elevation)


def test_attack_comparisons_are_paired_when_both_models_met_the_same_examples(results_dir):
    def per_example(model, correct):  # untargeted FGSM at ε 0.1 on examples 0..n-1, as attack_run writes it
        return pd.DataFrame(
            {
                "example": range(len(correct)),
                "label": 1,
                "attack": "fgsm",
                "targeted": False,
                "target": -1,
                "eps_pixel": 0.02,
                "eps_std": 0.1,
                "source": "self",
                "role": "sweep",
                "steps": 1,
                "restarts": 1,
                "prediction": [1 if ok else 2 for ok in correct],
            }
        ).to_csv(results_dir / "attacks" / model / "per_example.csv", index=False)

    capsules = [True] * 81 + [False] * 19  # 81 of 100 withstood
    per_example("capsnet-small", capsules)
    per_example("cnn-small", capsules[:50] + [False] * 44 + [True] * 6)  # 56: the capsules' 31 more, 6 fewer
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert (
        "Untargeted FGSM at ε=0.1: accuracy 0.81 for the capsules vs 0.56 for the CNN, difference +0.25 (95% "
        "interval +0.14 to +0.36, paired on the same 100 examples, 31 of which only the capsules and 6 only "
        "the CNN withstood;" in paragraph
    )
    assert (
        "Untargeted BIM at ε=0.1: accuracy 0.80 for the capsules vs 0.55 for the CNN, difference +0.26 "
        "(95% interval +0.12 to +0.37, on 100 / 100 examples;" in paragraph
    )  # no per-example rows for BIM
    assert (
        "Targeted FGSM at ε=0.25: targeted success rate 0.30 for the capsules vs 0.79 for the CNN, "
        in paragraph
    )
    assert "-0.50 (95% interval -0.60 to -0.36, on 100 / 100 examples;" in paragraph


def test_targeted_comparisons_pair_each_examples_success_over_its_four_targets(results_dir):
    import numpy as np

    from robustcaps.uncertainty import paired_mean_difference

    rng = np.random.default_rng(0)
    hits = {"capsnet-small": rng.random((100, 4)) < 0.3, "cnn-small": rng.random((100, 4)) < 0.8}
    for model, hit in hits.items():  # targeted FGSM at ε 0.25, one row per example and wrong class
        example, offset = np.divmod(np.arange(400), 4)
        target = (1 + offset + 1) % 5
        pd.DataFrame(
            {
                "example": example,
                "label": 1,
                "attack": "fgsm",
                "targeted": True,
                "target": target,
                "eps_pixel": 0.05,
                "eps_std": 0.25,
                "source": "self",
                "role": "sweep",
                "steps": 1,
                "restarts": 1,
                "prediction": np.where(hit.ravel(), target, 1),
            }
        ).to_csv(results_dir / "attacks" / model / "per_example.csv", index=False)
    low, high = paired_mean_difference(hits["capsnet-small"].mean(1), hits["cnn-small"].mean(1))
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert (
        f"(95% interval {low:+.2f} to {high:+.2f}, paired on the same 100 examples, t interval over "
        "examples; paper at ε=0.25: 0.19 vs 0.59)" in paragraph
    )
    assert high - low < 0.24  # the independent interval on 100 / 100 examples: -0.60 to -0.36


def test_robustness_verdict_pairs_each_familys_weakest_attack_on_the_same_examples():
    from robustcaps.report.robustness import robustness_verdict

    # 50 examples at ε 0.1; each model withstood examples 0..k-1 of each attack (k below)
    withstood = {
        ("capsnet-small", "fgsm"): 30,
        ("capsnet-small", "bim"): 31,
        ("capsnet-small", "worst"): 29,
        ("cnn-small", "fgsm"): 25,
        ("cnn-small", "bim"): 23,
        ("cnn-small", "worst"): 22,
    }
    summary = pd.DataFrame(
        [
            {
                "model": model,
                "attack": attack,
                "targeted": False,
                "source": "",
                "role": "sweep",
                "eps_std": 0.1,
                "metric": "accuracy",
                "value": k / 50,
                "n": 50,
            }
            for (model, attack), k in withstood.items()
        ]
    )
    outcomes = pd.DataFrame(
        [
            {
                "model": model,
                "attack": attack,
                "targeted": False,
                "eps_std": 0.1,
                "example": i,
                "score": float(i < k),
            }
            for (model, attack), k in withstood.items()
            for i in range(50)
        ]
    )
    checks = pd.DataFrame(
        {"model": ["capsnet-small", "cnn-small"], "check": "monotone_in_eps", "passed": True}
    )
    # as independent samples of 50, 0.60 (capsules' FGSM) against 0.46 (the CNN's BIM) is within chance ...
    unpaired = robustness_verdict({"summary": summary, "checks": checks})
    assert (
        "no clear robustness advantage under FGSM/BIM to begin with (+14.0 points, 95% interval -5.4"
        in unpaired
    )
    assert "too wide to conclude either way: ±18.7 points on 50 examples" in unpaired
    # ... but on the same examples 7 withstood only on the capsules and none only on the CNN
    paired = robustness_verdict({"summary": summary, "checks": checks, "outcomes": outcomes})
    assert (
        "accuracy is 0.58 (capsules) vs 0.44 (CNN): +14.0 points, 95% interval +3.6 to +23.6, paired on the "
        "same 50 examples." in paired
    )
    assert (
        "FGSM/BIM advantage (+14.0 points, 95% interval +3.6 to +23.7, paired on the same 50 examples, at "
        "ε≈0.1) survives" in paired
    )
    # the same win with a check that points to masked gradients failed on the capsules: not established
    masked = pd.concat(
        [checks, pd.DataFrame([{"model": "capsnet-small", "check": "large_eps_to_chance", "passed": False}])],
        ignore_index=True,
    )
    verdict = robustness_verdict({"summary": summary, "checks": masked, "outcomes": outcomes})
    assert "is not established: large_eps_to_chance failed" in verdict and "survives" not in verdict
    # a clear worst-case advantage where FGSM/BIM show none is said as such, not as nothing to confirm
    paper = ~summary["attack"].eq("worst")  # both models withstand examples 0..29 of FGSM and BIM
    even = summary.assign(value=summary["value"].where(~paper, 0.6))
    even_outcomes = outcomes.assign(
        score=outcomes["score"].where(
            outcomes["attack"].eq("worst"), (outcomes["example"] < 30).astype(float)
        )
    )
    mixed = robustness_verdict({"summary": even, "checks": checks, "outcomes": even_outcomes})
    assert "+14.0 points, 95% interval +3.6 to +23.6" in mixed and "nothing for the checks" not in mixed
    assert "That advantage is not the paper's: under FGSM/BIM alone it is not clear (+0.0 points" in mixed


def test_the_verdict_the_families_table_and_the_leaderboard_read_one_worst_case(results_dir):
    from robustcaps.report.compare import leaderboard
    from robustcaps.report.families import family_rows
    from robustcaps.report.headline import worst_case, worst_case_difference
    from robustcaps.report.robustness import robustness_verdict

    for model, kept in (("capsnet-small", 31), ("cnn-small", 12)):  # withstood of 40 under every attack
        rows = [
            {
                "example": i,
                "label": 1,
                "attack": attack,
                "targeted": False,
                "target": -1,
                "eps_pixel": 0.02,
                "eps_std": 0.1,
                "source": "self",
                "role": "sweep",
                "steps": 1,
                "restarts": 1,
                "prediction": 1 if i < kept + (attack == "fgsm") else 2,
            }
            for attack in ("fgsm", "bim", "worst")
            for i in range(40)
        ]
        pd.DataFrame(rows).to_csv(results_dir / "attacks" / model / "per_example.csv", index=False)
    results = load_results(results_dir)
    caps, cnn, gap = worst_case_difference(results, "capsnet-small", "cnn-small")
    assert (caps.value, cnn.value, caps.n) == (31 / 40, 12 / 40, 40)
    assert worst_case(results, "capsnet-small").attacks == "fgsm, bim, pgd, vote"  # the summary's attacks
    assert worst_case(results, "capsnet-small", eps=0.5).value != caps.value  # another ε, another number
    assert worst_case(results, "capsnet-small", eps=1.0) is None  # no ε within EPS_TOLERANCE of 1.0
    assert worst_case({"summary": pd.DataFrame(), "outcomes": pd.DataFrame()}, "cnn-small") is None
    board = leaderboard(results).set_index("model")["worst-case accuracy at ε 0.1"]
    assert board["capsnet-small"].startswith("0.78 (") and board["cnn-small"].startswith("0.30 (")
    table, _, _ = family_rows(results)
    points = f"{100 * gap.gap:+.1f} ({100 * gap.low:+.1f} to {100 * gap.high:+.1f})"
    assert table.set_index("model").loc["capsnet-small", "worst-case accuracy vs CNN at ε≈0.1"] == points
    assert (
        f"accuracy is 0.78 (capsules) vs 0.30 (CNN): {100 * gap.gap:+.1f} points, 95% interval "
        f"{100 * gap.low:+.1f} to {100 * gap.high:+.1f}, paired on the same 40 examples"
        in robustness_verdict(results)
    )


def test_notes_and_device_calls_recorded_in_provenance_reach_the_readme(results_dir):
    provenance = json.loads((results_dir / "provenance.json").read_text())
    provenance["notes"] = ["The CNN never learned on the full split."]
    call = {"call": 2, "commit": "ea380f1abae5f14", "wall_s": 276.9, "log": "device/call2.log"}
    provenance["device_calls"] = [{**call, "what": "reproduce, stopped in the checks."}]
    (results_dir / "provenance.json").write_text(json.dumps(provenance))
    text = write_report(results_dir).read_text()
    assert "## How this run was made" in text and "- The CNN never learned on the full split." in text
    assert "Device call 2 (commit ea380f1abae5, 277 s): reproduce, stopped in the checks." in text
    assert "`device/call2.log`" in text


def test_findings_follow_the_numbers(results_dir):
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "demo" in paragraph and "rendered stand-in" in paragraph
    assert "better than the CNN by 6.9 points" in paragraph  # 22.33% - 15.44% novel error
    assert "gradients_nonzero" in paragraph  # the capsule model's failed check is named
    assert "does not survive" in paragraph and "Caution" not in paragraph
    assert "clean accuracy (ε=0)" not in paragraph  # 0.93 and 0.94 on the attacked examples: no gap to say
    clean = pd.read_csv(results_dir / "clean" / "clean_error.csv")
    clean.loc[clean["model"] == "capsnet-small", "error"] = 0.7661
    clean.to_csv(results_dir / "clean" / "clean_error.csv", index=False)
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert (
        "Caution: capsnet-small has 76.6% clean test error" in paragraph and "cnn-small has" not in paragraph
    )
    # Make the checks pass and the capsules' worst case still better: the verdict turns.
    for checks in results_dir.glob("attacks/*/checks.csv"):
        frame = pd.read_csv(checks).assign(passed=True)
        frame.to_csv(checks, index=False)
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "survives" in paragraph and "does not survive" not in paragraph
    # The same accuracies on 10 attacked examples per cell: the advantage is within what chance gives.
    for summary in results_dir.glob("attacks/*/summary.csv"):
        pd.read_csv(summary).assign(n=10).to_csv(summary, index=False)
    paragraph = findings_sections(load_results(results_dir), "rendered")
    assert "no clear robustness advantage under FGSM/BIM to begin with (+25.6 points" in paragraph


def test_report_cli_and_missing_results(results_dir, tmp_path):
    result = CliRunner().invoke(cli, ["report", "--results", str(results_dir)])
    assert result.exit_code == 0, result.output
    assert (results_dir / "README.md").exists()
    with pytest.raises(RobustcapsError, match="--results"):
        write_report(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["report", "--results", str(empty)])
    assert result.exit_code == 1 and "Error: --results" in result.output
    assert not (empty / "README.md").exists()


def test_a_clean_accuracy_gap_on_the_attacked_examples_is_said_before_the_attacks(results_dir):
    summary = results_dir / "attacks" / "capsnet-small" / "summary.csv"
    frame = pd.read_csv(summary)
    frame.loc[frame["attack"] == "clean", "value"] = 0.82
    frame.to_csv(summary, index=False)
    paragraph = findings_sections(load_results(results_dir), "rendered")
    sentence = "the clean accuracy (ε=0) was 0.82 for the capsules and 0.94 for the CNN"
    assert sentence in paragraph and "from that gap of -0.12" in paragraph
    assert paragraph.index(sentence) < paragraph.index("Untargeted FGSM at ε=0.1")


def test_each_departure_from_the_paper_is_said_only_when_the_preset_makes_it():
    from robustcaps.report.findings import deviation_sentences

    assert deviation_sentences({"preset_settings": {"capsnet_overrides": [["iterations", 3]]}}) == []
    assert deviation_sentences({}) == []  # provenance written before the settings existed
    departed = deviation_sentences(
        {
            "preset_settings": {
                "capsnet_overrides": [["iterations", 2], ["estep_temperature", 0.25]],
                "lr_schedule": "cosine",
            }
        }
    )
    assert len(departed) == 3
    assert "2 EM routing iterations" in departed[0] and "0.25 as the E-step temperature" in departed[1]
    assert "cosine schedule" in departed[2]


def test_the_readme_leads_with_the_verdict_then_a_bullet_per_comparison(results_dir):
    text = write_report(results_dir).read_text()
    shown = text.split("## What the numbers show\n\n")[1].split("\n_Numbers:")[0]
    assert shown.startswith("**Verdict.** ")
    viewpoints = shown.split("### Viewpoints\n\n")[1].split("\n\n")[0].splitlines()
    attacks = shown.split("### Attacks\n\n")[1].split("\n\n")[0].splitlines()
    assert viewpoints and all(line.startswith("- ") for line in viewpoints + attacks)
    assert any("FGSM" in line for line in attacks) and any("azimuth" in line for line in viewpoints)
    board = text.split("### Leaderboard\n\n")[1].split("\n\n")[1].splitlines()
    assert board[0].startswith("| model | clean error | novel azimuth error")
    assert {line.split(" | ")[0] for line in board[2:]} == {"| capsnet-small", "| cnn-small"}

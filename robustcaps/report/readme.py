"""`robustcaps report`: results/README.md, its tables (CSV + Markdown) and figures (PNG + PDF).

Everything is recomputed from the small CSVs in the results tree (see robustcaps.report.tables), so the
report can be regenerated anywhere without checkpoints. Every table and figure names the command that
regenerates it, the dataset identity, the device and the commit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_text
from robustcaps.paper_results import FIG3
from robustcaps.report import plots
from robustcaps.report.compare import leaderboard
from robustcaps.report.families import family_rows
from robustcaps.report.findings import findings_sections, verdict
from robustcaps.report.headline import EPS
from robustcaps.report.robustness import TARGETED_EPS
from robustcaps.report.tables import (
    MODELS_DIR,
    PAPER_ATTACKS,
    PROVENANCE_JSON,
    checks_table,
    clean_table,
    interval_note,
    load_results,
    markdown_table,
    stronger_table,
    sweep_table,
    table2,
)

TABLES_DIR = Path("tables")
FIGURES_DIR = Path("figures")
HEADLINE_RUN = "converged"  # the subfolder `reproduce --preset converged` writes: the suite's answer


def paper_note(targeted: bool) -> str:
    """HSF18 Fig. 3's FGSM/BIM numbers at its ε, from paper_results.FIG3."""
    eps = TARGETED_EPS if targeted else EPS
    caps, cnn = (
        "/".join(f"{FIG3[(f, a, targeted, eps)]:.2f}" for a in PAPER_ATTACKS) for f in ("capsnet", "cnn")
    )
    return f"Paper, ε={eps:g}: CNN {cnn}, capsules {caps}."


def shown_command(command: str) -> str:
    """The command with each absolute path (a scratch folder of the machine it ran on) as a placeholder:
    the results name nothing that exists only there."""
    return " ".join("PATH" if word.startswith(("/", "~")) else word for word in command.split(" "))


def dataset_text(identity: dict) -> str:
    """One line that pins the data: the renderer's version, seed, size and a file hash, or the MD5 verdict."""
    if identity.get("kind") == "rendered":
        sha = next((v for k, v in sorted(identity.get("sha256", {}).items()) if "training-dat" in k), "")
        return (
            f"rendered stand-in (generator {identity.get('generator_version', '?')}, seed "
            f"{identity.get('seed')}, size {identity.get('options', {}).get('size', '?')}, "
            f"training-dat sha256 {sha[:12]})"
        )
    verified = "official MD5s verified" if identity.get("md5_verified") else "MD5s NOT the official ones"
    return f"smallNORB ({verified})"


def provenance_lines(results: dict, results_dir: Path) -> dict[str, str]:
    """Command, dataset, device and commit, from provenance.json or else from the attack summaries."""
    prov = dict(results["provenance"])
    summary = results["summary"]
    for key in ("git_commit", "device", "dataset"):
        if not prov.get(key) and not summary.empty and key in summary and summary[key].notna().any():
            prov[key] = str(summary[key].dropna().iloc[0])
    identity = prov.get("dataset_identity") or {}
    if isinstance(identity, dict) and identity:
        kind, text = identity.get("kind", "unknown"), dataset_text(identity)
    else:
        text = str(prov.get("dataset") or "unknown")
        kind = "rendered" if "rendered" in text else "unknown"
    return {
        "kind": kind,
        "dataset": text,
        "device": str(prov.get("device_name") or prov.get("device") or "unknown"),
        "commit": str(prov.get("git_commit") or "unknown"),
        "reproduce": shown_command(prov.get("command") or "robustcaps reproduce"),
        "report": f"robustcaps report --results {results_dir}",
    }


def timing_text(provenance: dict) -> str:
    """How long the pipeline took, per step (a resumed run lists the seconds each step took when it ran)."""
    steps = provenance.get("steps") or []
    if not steps:
        return ""
    total = sum(step["seconds"] for step in steps)
    parts = ", ".join(f"{step['step']} {step['seconds']:.0f} s" for step in steps)
    wall = provenance.get("wall_seconds", 0) / 60
    return (
        f"Compute time of all steps: {total / 60:.1f} min on {provenance.get('device_name', '?')} "
        f"(this invocation: {wall:.1f} min wall; steps: {parts}).\n"
    )


def notes_text(provenance: dict) -> str:
    """Notes recorded beside the numbers (`notes`: sentences; `device_calls`: a run made over several GPU
    calls, each with its commit and what it did), so that how the numbers came about stays with them."""
    notes, calls = provenance.get("notes") or [], provenance.get("device_calls") or []
    if not notes and not calls:
        return ""
    lines = ["## How this run was made\n", *(f"- {note}" for note in notes)]
    for c in calls:
        log = f" Log: `{c['log']}`." if c.get("log") else ""
        lines.append(
            f"- Device call {c.get('call', '?')} (commit {str(c.get('commit', '?'))[:12]}, "
            f"{c.get('wall_s', 0):.0f} s): {c.get('what', '')}{log}"
        )
    return "\n".join(lines) + "\n"


def other_runs_text(root: Path) -> str:
    """Runs kept in subfolders of this results folder (results/gpu/, made by `reproduce --preset gpu` on a
    lent GPU): a link and the verdict, recomputed from its own CSVs, so that the top README says what the
    larger runs show without repeating their README."""
    sections = []
    for sub in sorted(path.parent for path in root.glob(f"*/{PROVENANCE_JSON}")):
        if sub.name == HEADLINE_RUN:
            continue  # it leads the README instead (headline_text)
        results = load_results(sub)
        lines = provenance_lines(results, sub)
        preset = results["provenance"].get("preset", "?")
        made_by = caption(lines, "its README, tables and figures")
        sections.append(
            f"### Preset `{preset}` on {lines['device']}: [{sub.name}/README.md]({sub.name}/README.md)\n\n"
            f"{_verdict(results)}\n\n_{made_by}_\n"
        )
    return "## Other runs in this folder\n\n" + "\n".join(sections) if sections else ""


def headline_text(root: Path) -> str:
    """When this folder holds the converged run, its verdict and leaderboard lead the README, above this
    folder's own run (the demo `make demo` writes), which is a pipeline check and not the answer."""
    sub = root / HEADLINE_RUN
    if not (sub / PROVENANCE_JSON).exists():
        return ""
    results = load_results(sub)
    link = f"[{HEADLINE_RUN}/README.md]({HEADLINE_RUN}/README.md)"
    return "\n".join(
        [
            f"## Headline: the converged run ({link})\n",
            f"{_verdict(results)}\n",
            *_leaderboard_text(results),
            f"_{caption(provenance_lines(results, sub), 'its README, tables and figures')}_\n",
        ]
    )


def _leaderboard_text(results: dict) -> list[str]:
    board = leaderboard(results)
    if board.empty:
        return []
    note = (
        "Worst-case accuracy: per example, the worst over every untargeted attack in the next column, "
        "with its 95% Wilson interval; a failed check that points to masked gradients marks it not "
        "established.\n"
    )
    return ["### Leaderboard\n", note, markdown_table(board) + "\n"]


def _verdict(results: dict) -> str:
    summary, checks = results["summary"], results["checks"]
    if summary.empty and checks.empty:
        return "No attacks in this run; its README has the viewpoint and clean-error findings."
    return f"**Verdict.** {verdict(results)}"


def models_text(root: Path) -> str:
    """Where the trained full-split models are, and how to attack them again without retraining."""
    exported = sorted(path.parent.parent.name for path in (root / MODELS_DIR).glob("*/checkpoints/best.pt"))
    if not exported:
        return ""
    return (
        "## Trained models\n\n"
        f"The full-split models are in `{MODELS_DIR}/` ({', '.join(f'`{m}`' for m in exported)}; weights "
        "only, val-selected). An independent sweep on them needs no training: `robustcaps attack "
        f"{root / MODELS_DIR / exported[0]} --out SWEEP --attack fgsm --eps 0:0.5:0.1`. The rendered "
        "stand-in they were trained on is rendered again, byte for byte, into this machine's cache when its "
        "folder is not here (its SHA-256s are checked against the model's metadata.json); a model trained "
        "on real smallNORB needs `--data DIR` with the official files.\n"
    )


def caption(lines: dict[str, str], made_by: str = "this file") -> str:
    return (
        f"Numbers: `{lines['reproduce']}`; {made_by}: `{lines['report']}`. "
        f"Data: {lines['dataset']}. Device: {lines['device']}. Commit: {lines['commit']}."
    )


def write_table(frame: pd.DataFrame, stem: Path, title: str, note: str, lines: dict) -> str:
    """Write `stem`.csv and `stem`.md; return the Markdown section for the README."""
    atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False))
    section = f"### {title}\n\n{note}\n\n{markdown_table(frame)}\n_{caption(lines)}_\n"
    atomic_write_text(stem.with_suffix(".md"), section)
    return section


def _tables(results: dict, root: Path, lines: dict) -> list[str]:
    tables = root / TABLES_DIR
    summary = results["summary"]
    specs = [
        (
            "clean_error",
            clean_table(results["clean"]),
            "Clean test error",
            "Error on the test part of each split, centre crop and 13-crop (centre + 12 diagonal offsets); "
            "in brackets its 95% Wilson interval on n test images.",
        ),
        (
            "table2",
            table2(results["viewpoint"]),
            "Novel viewpoints (Table 2 analogue)",
            "The capsule network is stopped when its familiar error reaches the CNN's (checked on "
            "familiar data only); novel viewpoints are never used to choose anything. When the capsules' "
            "step budget ran out above the CNN's familiar error, the match is also made the other way: "
            "the CNN at its first epoch whose familiar error was at or below the capsules'. "
            "Paper numbers are on real smallNORB.",
        ),
        (
            "families",
            family_rows(results)[0],
            "Every capsule family against the CNN",
            "Capsules − CNN in percentage points with the 95% interval: clean test error (centre crop), "
            "novel-viewpoint error at matched familiar error (paired on the same images; against the CNN "
            "stopped at the capsules' familiar error where they stayed above the CNN's) and the per-example "
            "worst-case accuracy over the untargeted white-box attacks (paired on the same examples). "
            "The vote attack, which bypasses routing, runs where a family has such a head: EM (one M-step "
            "on uniform assignments) and dynamic routing (uniform coupling); self-routing has none, since "
            "its coefficients come from one softmax in a single pass, and uniform ones would give every "
            "class the same activation.",
        ),
        (
            "untargeted",
            sweep_table(summary, targeted=False),
            "Untargeted FGSM / BIM: accuracy per ε",
            "ε in units of the standardised input (Fig. 3 units). "
            + paper_note(False)
            + interval_note(summary),
        ),
        (
            "targeted",
            sweep_table(summary, targeted=True),
            "Targeted FGSM / BIM: success rate per ε",
            "Success rate averaged over the wrong target classes. "
            + paper_note(True)
            + interval_note(summary),
        ),
        (
            "stronger",
            stronger_table(summary),
            "Stronger attacks",
            "PGD, APGD, transfer (crafted on `source`), the vote attack and the per-example worst case."
            + interval_note(summary),
        ),
        (
            "checks",
            checks_table(results["checks"]),
            "Integrity checks",
            "Carlini et al. 2019 / Athalye et al. 2018: "
            "a FAIL means the robustness number is not to be trusted.",
        ),
    ]
    return [write_table(frame, tables / name, title, note, lines) for name, frame, title, note in specs]


def _figures(results: dict, root: Path, lines: dict) -> list[str]:
    figures = root / FIGURES_DIR
    footer = caption(lines).replace("`", "")
    summary, sections = results["summary"], []
    jobs = [
        ("fig3_fgsm_bim", plots.plot_fig3, summary, "FGSM and BIM against ε, paper points as stars"),
        ("all_attacks", plots.plot_all_attacks, summary, "Untargeted accuracy under every attack"),
        (
            "familiar_vs_novel",
            plots.plot_familiar_novel,
            results["viewpoint"],
            "Familiar against novel error",
        ),
        ("training_curves", plots.plot_training, results["training"], "Training curves"),
    ]
    for name, plot, frame, title in jobs:
        if frame.empty:
            continue
        plot(frame, figures / name, footer)
        sections.append(
            f"### {title}\n\n![{title}]({FIGURES_DIR / name}.png) "
            f"([PDF]({FIGURES_DIR / name}.pdf))\n\n_{caption(lines)}_\n"
        )
    return sections


def write_report(results_dir: str | Path) -> Path:
    """Read the results tree, write tables/, figures/ and README.md; returns the README path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise RobustcapsError(f"--results {root}: no such directory; run `robustcaps reproduce` first.")
    results = load_results(root)
    if all(isinstance(v, pd.DataFrame) and v.empty for v in results.values() if not isinstance(v, dict)):
        raise RobustcapsError(
            f"--results {root}: no result CSVs found (clean/, viewpoint/, attacks/); "
            "run `robustcaps reproduce` first."
        )
    lines = provenance_lines(results, root)
    tables, figures = _tables(results, root, lines), _figures(results, root, lines)
    headline = headline_text(root)
    preset = results["provenance"].get("preset", "?")
    own = f"## This folder's run (preset `{preset}`)\n" if headline else "## What the numbers show\n"
    text = "\n".join(
        [
            "# robustcaps results\n",
            "Do matrix capsules with EM routing (HSF18) beat CNNs on novel viewpoints "
            "and under white-box attack?\n",
            *([headline] if headline else []),
            own,
            findings_sections(results, lines["kind"]) + "\n",
            *_leaderboard_text(results),
            f"_{caption(lines)}_\n",
            timing_text(results["provenance"]),
            notes_text(results["provenance"]),
            other_runs_text(root),
            models_text(root),
            "## Tables\n",
            *tables,
            "## Figures\n",
            *figures,
        ]
    )
    return atomic_write_text(root / "README.md", text)

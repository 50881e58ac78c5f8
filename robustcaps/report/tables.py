"""Read the small CSVs of a results/ tree and turn them into the report's tables.

The results/ tree (written by `robustcaps reproduce`, read here):

    provenance.json              preset, command, device, commit, dataset identity, step times
    clean/clean_error.csv        model, family, split, part, crops, error, n
    viewpoint/<split>.csv        the Table 2 analogue of one split (see robustcaps.study.viewpoint)
    training/metrics.csv         run, model, family, split + the trainer's metrics.csv columns
    models/<model>-full/         the full-split models, weights only: `robustcaps eval` and `attack` read them
    attacks/<name>/summary.csv   the attacks' summary (model, attack, targeted, eps_std, value...)
    attacks/<name>/checks.csv    the attacks' integrity checks (model, check, passed, detail)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from robustcaps.errors import RobustcapsError
from robustcaps.models import REGISTRY
from robustcaps.paper_results import CLEAN_ERROR, TABLE2
from robustcaps.report import columns as col
from robustcaps.report.columns import COUNT_COLUMNS  # noqa: F401 (study.viewpoint reads it here)
from robustcaps.uncertainty import wilson

CLEAN_CSV = Path("clean") / "clean_error.csv"
VIEWPOINT_DIR = Path("viewpoint")
TRAINING_CSV = Path("training") / "metrics.csv"
MODELS_DIR = Path("models")  # the full-split models, weights only (training.checkpoints.export_run)
ATTACKS_DIR = Path("attacks")
PROVENANCE_JSON = Path("provenance.json")
PAPER_ATTACKS = ("fgsm", "bim")

CAPSULE_FAMILIES = tuple(dict.fromkeys(cls.family for cls, _ in REGISTRY.values() if cls.family != "cnn"))


def family_of(model: str) -> str:
    """capsnet (EM), dynamic, self-routing or cnn: the family of the registered model `model` names, or
    that a run name starts with (`cnn-small-azimuth`: cnn-small's); "" for no model."""
    if model == "":
        return ""
    registered = [name for name in REGISTRY if model == name or model.startswith(f"{name}-")]
    if not registered:
        raise RobustcapsError(
            f"model {model!r} in the results is not a registered model ({', '.join(REGISTRY)}); "
            "report results with the robustcaps version that made them"
        )
    return REGISTRY[max(registered, key=len)][0].family


def csv_bool(column: pd.Series) -> pd.Series:
    """A True/False column as pandas read it back: bool, or the strings "True"/"1" when a CSV mixed types."""
    return column.astype(str).str.lower().isin(("true", "1"))


def _read_csvs(paths: list[Path]) -> pd.DataFrame:
    frames = [pd.read_csv(path) for path in sorted(paths) if path.stat().st_size > 0]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_results(results_dir: str | Path) -> dict[str, pd.DataFrame | dict]:
    """Every input of the report; a part that was not produced is an empty frame."""
    root = Path(results_dir)
    summary = _read_csvs(list((root / ATTACKS_DIR).glob("*/summary.csv")))
    if not summary.empty:
        summary[col.ATTACK] = summary[col.ATTACK].astype(str).str.lower()
        summary[col.TARGETED] = csv_bool(summary[col.TARGETED])
        source = summary[col.SOURCE] if col.SOURCE in summary else pd.Series("", index=summary.index)
        # the attacks write "self" for a white-box attack; here an empty source means white-box.
        summary[col.SOURCE] = source.astype(object).where(source.notna(), "").astype(str).replace("self", "")
        role = summary[col.ROLE] if col.ROLE in summary else pd.Series("sweep", index=summary.index)
        summary[col.ROLE] = role.fillna("sweep").astype(str)
        summary[col.FAMILY] = summary[col.MODEL].map(family_of)
    provenance_path = root / PROVENANCE_JSON
    return {
        "outcomes": white_box_outcomes(root),
        "clean": _read_csvs([root / CLEAN_CSV] if (root / CLEAN_CSV).exists() else []),
        "viewpoint": with_protocol(_read_csvs(list((root / VIEWPOINT_DIR).glob("*.csv")))),
        "training": _read_csvs([root / TRAINING_CSV] if (root / TRAINING_CSV).exists() else []),
        "summary": summary,
        "checks": _read_csvs(list((root / ATTACKS_DIR).glob("*/checks.csv"))),
        "provenance": json.loads(provenance_path.read_text()) if provenance_path.exists() else {},
    }


def white_box_outcomes(root: Path) -> pd.DataFrame:
    """Per example and white-box sweep cell, each model's score (model, family, attack, targeted, eps_std,
    example, score): untargeted, 1 if it still classified the example correctly, else 0; targeted, the
    fraction of the wrong classes the attack reached. From the per_example.csv files that `reproduce`
    copies next to each summary; empty when there are none."""
    frames = []
    for path in sorted((root / ATTACKS_DIR).glob("*/per_example.csv")):
        if not path.with_name("summary.csv").is_file():  # which model these rows are about is not known
            continue
        model = pd.read_csv(path.with_name("summary.csv"), usecols=[col.MODEL], nrows=1)[col.MODEL].iloc[0]
        rows = pd.read_csv(path)
        rows = rows[(rows[col.SOURCE] == col.SELF) & (rows[col.ROLE] == col.SWEEP)]
        targeted = csv_bool(rows[col.TARGETED])
        hit = rows[col.PREDICTION] == rows[col.TARGET].where(targeted, rows[col.LABEL])
        frame = rows[[col.EPS_STD, col.EXAMPLE]].assign(
            **{
                col.MODEL: model,
                col.FAMILY: family_of(model),
                col.ATTACK: rows[col.ATTACK].str.lower(),
                col.TARGETED: targeted,
                col.SCORE: hit,
            }
        )
        frames.append(frame[list(col.OUTCOMES)])
    if not frames:
        return pd.DataFrame()
    keys = [key for key in col.OUTCOMES if key != col.SCORE]
    return pd.concat(frames, ignore_index=True).groupby(keys, as_index=False, sort=False)[col.SCORE].mean()


def with_protocol(viewpoint: pd.DataFrame) -> pd.DataFrame:
    """Viewpoint rows with their `protocol` ("paper" or "reverse", robustcaps.study.viewpoint); rows written
    before the reverse match existed are all "paper"."""
    if viewpoint.empty or col.PROTOCOL in viewpoint:
        return viewpoint
    return viewpoint.assign(protocol="paper")


def full_test_rows(clean: pd.DataFrame) -> pd.DataFrame:
    """The clean-error rows of the full split's test part, centre crop: each model's headline error."""
    return clean[(clean[col.SPLIT] == "full") & (clean[col.PART] == "test") & (clean[col.CROPS] == 1)]


def matched_to(viewpoint: pd.DataFrame) -> pd.Series:
    """Each viewpoint row's `matched_to` (the model it was matched against); "" where the CSV predates the
    column (then every row belongs to the EM pair)."""
    if col.MATCHED_TO not in viewpoint:
        return pd.Series("", index=viewpoint.index, dtype=str)
    return viewpoint[col.MATCHED_TO].fillna("").astype(str)


def em_pair(viewpoint: pd.DataFrame) -> pd.DataFrame:
    """The viewpoint rows of the paper's comparison (EM capsules and the CNN): without the other capsule
    families' rows, nor the CNN stopped at one of their familiar errors."""
    if viewpoint.empty:
        return viewpoint
    against = matched_to(viewpoint)
    family = viewpoint[col.MODEL].map(family_of)
    keep = family.isin(("capsnet", "cnn")) & (
        (against == "") | against.map(family_of).isin(("capsnet", "cnn"))
    )
    return viewpoint[keep]


def shown_rows(viewpoint: pd.DataFrame) -> pd.DataFrame:
    """Every model's own viewpoint rows, and the reverse match of the paper's pair only (the CNN stopped at
    another family's familiar error stays in the viewpoint tables)."""
    if viewpoint.empty:
        return viewpoint
    viewpoint = with_protocol(viewpoint)
    return viewpoint[(viewpoint[col.PROTOCOL] == "paper") | viewpoint.index.isin(em_pair(viewpoint).index)]


def possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def step_of(checkpoint: str) -> str:
    """ "step N" from a snapshot's name (training.checkpoints.snapshot_name), else the name itself."""
    digits = re.search(r"\d+$", str(checkpoint))
    return f"step {int(digits.group())}" if digits else str(checkpoint)


def markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    """A GitHub Markdown table. Written by hand: pandas' to_markdown needs `tabulate`, not a dependency."""
    if frame.empty:
        return "_(no data)_\n"

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else floatfmt.format(value)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def percent(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}%"


def percent_interval(value: float, n: int) -> str:
    """ "45.8% (41.0–50.7)": the rate and its 95% Wilson interval on n examples."""
    if pd.isna(value) or pd.isna(n):
        return percent(value)
    low, high = wilson(value, int(n))
    return f"{percent(value)} ({100 * low:.1f}–{100 * high:.1f})"


def interval_note(summary: pd.DataFrame) -> str:
    """How wide a 95% interval on one attack cell's rate can be, for the examples per cell in `summary`."""
    if summary.empty or col.N not in summary:
        return ""
    n = int(summary[col.N].min())
    low, high = wilson(0.5, n)
    fewest = f"{n} examples per cell" if n == summary[col.N].max() else f"at least {n} examples per cell"
    return f" {fewest}: a 95% interval on a rate can be up to ±{(high - low) / 2:.2f} wide (Wilson, at 0.5)."


def clean_table(clean: pd.DataFrame) -> pd.DataFrame:
    """Clean error per model, split and part, one column per crop count (1 and 13), with the paper's."""
    if clean.empty:
        return clean
    wide = clean.pivot_table(
        index=[col.MODEL, col.SPLIT, col.PART], columns=col.CROPS, values=col.ERROR
    ).reset_index()
    wide.columns = [
        f"error ({c} crop{'s' if c != 1 else ''})" if isinstance(c, int | float) else c for c in wide.columns
    ]
    n = clean.groupby([col.MODEL, col.SPLIT, col.PART])[col.N].max().reset_index()
    wide = wide.merge(n, on=[col.MODEL, col.SPLIT, col.PART])
    paper = {1: [], 13: []}
    for row in wide.itertuples(index=False):
        for crops in paper:
            value = CLEAN_ERROR.get((family_of(row.model), crops)) if row.split == "full" else None
            paper[crops].append(percent(value) if value is not None and row.part == "test" else "")
    for column in [c for c in wide.columns if c.startswith("error")]:
        wide[column] = [percent_interval(e, n) for e, n in zip(wide[column], wide[col.N], strict=True)]
    wide["paper (1 crop)"], wide["paper (13 crops)"] = paper[1], paper[13]
    return wide


def table2(viewpoint: pd.DataFrame) -> pd.DataFrame:
    """The Table 2 analogue: familiar and novel error per split and model, next to the paper's."""
    if viewpoint.empty:
        return viewpoint
    viewpoint = (
        with_protocol(viewpoint).sort_values([col.SPLIT, col.PROTOCOL, col.MODEL]).reset_index(drop=True)
    )
    paper = viewpoint[col.PROTOCOL] == "paper"

    def from_paper(column: str) -> list[str]:
        return [
            percent(TABLE2[(s, family_of(m))][column]) if is_paper and (s, family_of(m)) in TABLE2 else ""
            for s, m, is_paper in zip(viewpoint[col.SPLIT], viewpoint[col.MODEL], paper, strict=True)
        ]

    return pd.DataFrame(
        {
            "split": viewpoint[col.SPLIT],
            "model": viewpoint[col.MODEL],
            "match": [
                "capsules stopped at the CNN's"
                if is_paper
                else f"CNN stopped at {possessive(against or 'the capsules')} ({step_of(which)})"
                for is_paper, which, against in zip(
                    paper, viewpoint.get(col.CHECKPOINT, paper), matched_to(viewpoint), strict=True
                )
            ],
            **{
                f"{part} error (95% interval)": [
                    percent_interval(e, n)
                    for e, n in zip(viewpoint[f"{part}_error"], viewpoint[f"n_{part}"], strict=True)
                ]
                for part in ("familiar", "novel")
            },
            "paper familiar": from_paper(col.FAMILIAR_ERROR),
            "paper novel": from_paper(col.NOVEL_ERROR),
            "familiar gap (caps − CNN)": viewpoint[col.FAMILIAR_GAP].map(percent),
            "n familiar / novel": [
                f"{a} / {b}" for a, b in zip(viewpoint[col.N_FAMILIAR], viewpoint[col.N_NOVEL], strict=True)
            ],
        }
    )


def sweep_table(summary: pd.DataFrame, targeted: bool) -> pd.DataFrame:
    """FGSM/BIM white-box sweeps: one row per ε (standardised units), one column per attack and model."""
    if summary.empty:
        return summary
    rows = summary[
        summary[col.ATTACK].isin(PAPER_ATTACKS)
        & (summary[col.TARGETED] == targeted)
        & (summary[col.SOURCE] == "")
        & (summary[col.ROLE] == "sweep")
    ]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(
        eps=rows[col.EPS_STD].round(3), column=rows[col.ATTACK].str.upper() + " " + rows[col.MODEL]
    )
    wide = rows.pivot_table(index="eps", columns="column", values="value", aggfunc="mean")
    return wide.reset_index().rename(columns={"eps": "ε (std units)"})


def stronger_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Every other attack (PGD, APGD, transfer, vote, worst case): a row per attack/model, ε as columns."""
    if summary.empty:
        return summary
    paper = (
        summary[col.ATTACK].isin(PAPER_ATTACKS) & (summary[col.SOURCE] == "") & (summary[col.ROLE] == "sweep")
    )
    rows = summary[~paper & (summary[col.ATTACK] != "clean")]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(
        eps=rows[col.EPS_STD].round(3).map(lambda e: f"ε={e:g}"),
        mode=rows[col.TARGETED].map({True: "targeted", False: "untargeted"}),
    )
    # role "check": the extra cells of the integrity checks (PGD at ε_pixel 0.5, PGD with 4× the budget).
    index = [col.ATTACK, col.SOURCE, col.MODEL, "mode", col.ROLE, col.METRIC]
    wide = rows.pivot_table(index=index, columns="eps", values="value", aggfunc="mean")
    ordered = sorted(wide.columns, key=lambda c: float(c[2:]))
    return wide[ordered].reset_index()


def checks_table(checks: pd.DataFrame) -> pd.DataFrame:
    if checks.empty:
        return checks
    passed = csv_bool(checks[col.PASSED])
    out = checks.assign(result=passed.map({True: "pass", False: "FAIL"}))
    return out[[col.MODEL, col.CHECK, "result", col.DETAIL]].drop_duplicates().reset_index(drop=True)

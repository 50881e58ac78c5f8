"""The per-example worst case over every untargeted attack that ran (the `worst` rows), and which entered it.

An example counts as robust at ε only if the clean image and every untargeted attack at that ε (white-box,
vote, transfer, Square, AutoAttack, and the checks' extra cells) leave it correctly classified: any
adversarial image any of them found is a valid one, since all are judged by the same routed model.
"""

from __future__ import annotations

import pandas as pd

from robustcaps.attacks.autoattack import ENSEMBLES
from robustcaps.attacks.sweep import EXAMPLE_COLUMNS, SELF, Cell


def worst_case(per_example: pd.DataFrame) -> pd.DataFrame:
    """Per example and ε, robust only if every untargeted attack (and the clean image) is classified right.

    The clean image lies in every ε-ball, so it joins every ε: worst-case accuracy never exceeds clean.
    """
    untargeted = per_example[~per_example["targeted"].astype(bool)]
    clean = untargeted[untargeted["attack"] == "clean"]
    rows = []
    for eps_pixel, group in untargeted[~untargeted["attack"].isin(["clean", "worst"])].groupby("eps_pixel"):
        group = pd.concat([group, clean])
        wrong = group[group["prediction"] != group["label"]].drop_duplicates("example").set_index("example")
        first = group.drop_duplicates("example").set_index("example")
        first.loc[wrong.index, "prediction"] = wrong["prediction"]
        attacked = group[group["attack"] != "clean"]
        role = "sweep" if (attacked["role"] == "sweep").any() else "check"
        eps_std = attacked["eps_std"].iloc[0]
        first = first.reset_index().assign(attack="worst", eps_pixel=eps_pixel, eps_std=eps_std, role=role)
        rows.append(first.assign(source=SELF, steps=0, restarts=0, target=-1))
    if not rows:
        return pd.DataFrame(columns=list(EXAMPLE_COLUMNS))
    return pd.concat(rows, ignore_index=True)[list(EXAMPLE_COLUMNS)]


def worst_accuracy(per_example: pd.DataFrame, eps_pixel: float) -> float:
    """Worst-case accuracy at `eps_pixel` over the attacks in `per_example` (nan when none ran there)."""
    worst = worst_case(per_example)
    worst = worst[worst["eps_pixel"] == eps_pixel]
    return float((worst["prediction"] == worst["label"]).mean()) if len(worst) else float("nan")


def cell_label(attack: str, source: str, role: str, steps: int, restarts: int) -> str:
    """How one cell is named in `worst_of`: the attack; `transfer:` when crafted on another model; its
    (steps x restarts) when the checks added it with a budget of its own."""
    label = attack if source == SELF else f"transfer:{attack}"
    return label if role == "sweep" else f"{label}({steps}x{restarts})"


def worst_of(per_example: pd.DataFrame) -> dict[float, str]:
    """ε_pixel -> the attacks that entered the worst case there, '+'-joined in the order they ran."""
    attacked = per_example[
        ~per_example["targeted"].astype(bool) & ~per_example["attack"].isin(["clean", "worst"])
    ]
    cells = attacked.drop_duplicates(["eps_pixel", "attack", "source", "role", "steps", "restarts"])
    labels: dict[float, list[str]] = {}
    for row in cells.itertuples():
        label = cell_label(row.attack, row.source, row.role, int(row.steps), int(row.restarts))
        labels.setdefault(float(row.eps_pixel), [])
        if label not in labels[float(row.eps_pixel)]:
            labels[float(row.eps_pixel)].append(label)
    return {eps: "+".join(names) for eps, names in labels.items()}


CONVERGE = "converge"  # the role of the doubled-budget rerun
CONVERGE_EPS_STD = 0.1  # the headline ε (standardised units)
CONVERGED_DROP = 0.02  # worst-case accuracy may fall by at most 2 points (or one example) when doubled
# attacks with a step budget to double (FGSM has one step; Square's budget is --queries)
ENSEMBLE_LEAD = "apgd-ce"
DOUBLABLE = ("bim", "pgd", "apgd-ce", "apgd-dlr", "cw", "autoattack", "autoattack-fast")


def converge_cell(config, summary: pd.DataFrame) -> Cell | None:
    """The strongest white-box attack at the sweep ε nearest ε_std = 0.1 (lowest accuracy; a tie goes to
    the one listed last), rerun with twice its steps and restarts (AutoAttack: its APGD-CE member at twice
    the ensemble's): if the worst case has converged, that changes it by at most CONVERGED_DROP."""
    sweep = summary[(summary["role"] == "sweep") & (summary["eps_pixel"] > 0) & (summary["source"] == SELF)]
    sweep = sweep[~sweep["targeted"].astype(bool)]
    sweep = sweep[sweep["attack"].map(lambda a: a.removesuffix("-vote") in DOUBLABLE)]
    if sweep.empty:
        return None
    nearest = sweep.loc[(sweep["eps_std"] - CONVERGE_EPS_STD).abs().idxmin(), "eps_pixel"]
    rows = sweep[sweep["eps_pixel"] == nearest]
    order = {attack: k for k, attack in enumerate(config.attacks)}
    rows = rows.assign(order=rows["attack"].map(order)).sort_values(
        ["value", "order"], ascending=[True, False]
    )
    best = rows.iloc[0]
    eps = float(best["eps_std"] if config.units == "std" else best["eps_pixel"])
    # An ensemble's doubled rerun is its first member (APGD-CE, which attacks every example and flips
    # most): doubling all four would quadruple the costliest cell of the sweep (Square's queries).
    attack = ENSEMBLE_LEAD if best["attack"] in ENSEMBLES else best["attack"]
    return Cell(
        attack,
        eps,
        float(best["eps_pixel"]),
        float(best["eps_std"]),
        False,
        SELF,
        CONVERGE,
        2 * int(best["steps"]),
        2 * int(best["restarts"]),
    )


def check_converged(per_example: pd.DataFrame) -> tuple[bool, str] | None:
    """Worst-case accuracy with and without the doubled rerun of converge_cell, at its ε."""
    doubled = per_example[per_example["role"] == CONVERGE]
    if doubled.empty:
        return None
    cell = doubled.iloc[0]
    before = worst_accuracy(per_example[per_example["role"] != CONVERGE], cell["eps_pixel"])
    after = worst_accuracy(per_example, cell["eps_pixel"])
    allowed = max(CONVERGED_DROP, 1 / doubled["example"].nunique())
    detail = (
        f"worst case at ε_std={cell['eps_std']:.3g}: {before:.3f}, {after:.3f} with {cell['attack']} "
        f"rerun at {cell['steps']} steps × {cell['restarts']} restarts (twice its budget): change "
        f"{after - before:+.3f} (allowed drop {allowed:.3f})"
    )
    return bool(before - after <= allowed + 1e-9), detail

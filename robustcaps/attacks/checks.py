"""Integrity checks that an attack evaluation can be trusted (Carlini et al. 2019; Athalye et al. 2018).

Each check reads the sweep's summary (or probes the model once) and gives one `checks.csv` row
(model, check, passed, detail). A failed check means the *evaluation* is suspect, usually because
gradients are masked (Athalye et al.) and the reported robustness is an artefact:

- monotone_in_eps: accuracy non-increasing (targeted success non-decreasing) in ε, per curve;
- iterative_vs_single_step: white-box BIM and PGD no weaker than white-box FGSM at the same ε (transfer
  attacks are exempt: iterative ones transfer worse than one FGSM step);
- large_eps_to_chance: PGD at ε_pixel = 0.5 (enough to turn any image mid-grey) ≤ chance (0.2);
- targeted_large_eps_succeeds: in a targeted sweep, targeted BIM (else PGD) at ε_pixel = 0.5 reaches its
  target at least 1 − chance (0.8) of the time: with that budget any image can be pushed into any class,
  so a targeted attack that levels off below is held back by the gradients, not by the model;
- more_steps_and_restarts: PGD with 4× steps and 2r+1 restarts loses no more accuracy than
  max(0.03, sampling slack) against the default PGD at the ε where that leaves half the clean accuracy;
- worst_case_converged: the strongest white-box attack at the sweep ε nearest ε_std = 0.1, rerun with twice
  its steps and restarts, lowers the worst-case accuracy there by at most 2 points (or one example; the
  detail gives the change: attacks.worst);
- blackbox_weaker_than_whitebox: Square and transfer attacks no stronger than the best white-box attack;
- vote_surrogate_classifies: the vote head (`vote_logits`, routing bypassed) classifies the clean examples
  above chance; if it does not, a vote attack is no adaptive attack on this model (on a weakly trained
  capsnet the vote head ranked classes backwards: 0.05 accuracy, and its "attack" raised the routed
  accuracy with ε), so the vote curves are left out of the checks below and the vote check is not run;
- vote_not_stronger_than_routed: each `*-vote` attack (Gu et al. 2021) no stronger than the same attack
  through the routed logits; when it is, routing masks gradients and routed-attack robustness is inflated;
- input_gradients: ∇_x CE(logits, y) finite, and all-zero for < 1% of examples;
- deterministic_forward: eval mode, and two forward passes agree.

Comparisons of two accuracies on the same n examples allow for sampling noise: two binomial standard
errors at the larger accuracy, and never less than one example (1/n).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from robustcaps.attacks.adapters import NUM_CLASSES, AttackConfig, eps_pixel_and_std, predict
from robustcaps.attacks.sweep import SELF, Cell, EvalSet, Victim, cell_budget
from robustcaps.attacks.worst import check_converged, converge_cell
from robustcaps.models import has_vote_head

CHANCE = 1 / NUM_CLASSES
LARGE_EPS_PIXEL = 0.5
TARGETED_CHECK_ATTACKS = ("bim", "pgd")  # iterative: one FGSM step is not expected to reach a target
STRONG_STEPS_FACTOR = 4
STRONGER_ATTACK_THRESHOLD = 0.03
MAX_ZERO_GRADIENT_FRACTION = 0.01
DETERMINISM_ATOL = 1e-5
CHECK_COLUMNS = ("model", "check", "passed", "detail")


def tolerance(p: float, n: int) -> float:
    """Sampling slack for comparing accuracies on n examples: 2 standard errors, at least 1/n."""
    return max(1 / n, 2 * math.sqrt(p * (1 - p) / n))


def strong_restarts(config: AttackConfig) -> int:
    return 2 * config.restarts + 1


def check_cells(config: AttackConfig, victim: Victim, summary: pd.DataFrame, sigma_mean: float) -> list[Cell]:
    """Extra cells the checks need: PGD at ε_pixel = 0.5, PGD with a 4× budget at one sweep ε and the
    strongest attack at twice its budget near ε_std = 0.1 (worst.converge_cell); in a sweep with targeted
    attacks, also the targeted attack at ε_pixel = 0.5 (a targeted-only sweep gets that one alone: its
    untargeted counterpart is another sweep's business)."""
    targeted = _targeted_cells(config, sigma_mean)
    if False not in config.targeted:
        return targeted
    cells = [
        _pgd_cell(attack, LARGE_EPS_PIXEL, sigma_mean, config.steps, config.restarts)
        for attack in (("pgd", "pgd-vote") if has_vote_head(victim.model) else ("pgd",))
    ]
    eps_pixel = strength_check_eps(summary)
    if eps_pixel is not None:
        cells.append(_pgd_cell("pgd", eps_pixel, sigma_mean, config.steps, config.restarts))
        steps = STRONG_STEPS_FACTOR * config.steps
        cells.append(_pgd_cell("pgd", eps_pixel, sigma_mean, steps, strong_restarts(config)))
    doubled = converge_cell(config, summary) if "value" in summary else None
    return cells + ([doubled] if doubled is not None else []) + targeted


def _targeted_cells(config: AttackConfig, sigma_mean: float) -> list[Cell]:
    """The sweep's iterative targeted attack (BIM, the paper's, else PGD) at ε_pixel = 0.5, with its own
    budget; none when the sweep is untargeted or has no iterative targeted attack."""
    attack = next((a for a in TARGETED_CHECK_ATTACKS if a in config.attacks), None)
    if True not in config.targeted or attack is None:
        return []
    _, eps_std = eps_pixel_and_std(LARGE_EPS_PIXEL, "pixel", sigma_mean)
    budget = cell_budget(attack, config)
    return [Cell(attack, LARGE_EPS_PIXEL, LARGE_EPS_PIXEL, eps_std, True, SELF, "check", *budget)]


def _pgd_cell(attack: str, eps_pixel: float, sigma_mean: float, steps: int, restarts: int) -> Cell:
    _, eps_std = eps_pixel_and_std(eps_pixel, "pixel", sigma_mean)
    return Cell(attack, eps_pixel, eps_pixel, eps_std, False, SELF, "check", steps, restarts)


def strength_check_eps(summary: pd.DataFrame) -> float | None:
    """The sweep ε_pixel where default PGD leaves about half the clean accuracy: a weak attack shows most."""
    sweep = summary[(summary["role"] == "sweep") & (summary["eps_pixel"] > 0)]
    if sweep.empty:
        return None
    pgd = _rows(sweep, attack="pgd", targeted=False, source=SELF)
    clean = _rows(summary, attack="clean")["value"]
    if pgd.empty or clean.empty:
        levels = sorted(sweep["eps_pixel"].unique())
        return float(levels[len(levels) // 2])
    best = (pgd["value"] - clean.iloc[0] / 2).abs().idxmin()
    return float(pgd.loc[best, "eps_pixel"])


def _rows(summary: pd.DataFrame, **where) -> pd.DataFrame:
    mask = pd.Series(True, index=summary.index)
    for column, value in where.items():
        mask &= summary[column] == value
    return summary[mask]


def _describe(row: pd.Series) -> str:
    mode = " targeted" if row["targeted"] else ""
    source = "" if row["source"] == SELF else f" from {row['source']}"
    return f"{row['attack']}{mode}{source} at ε_std={row['eps_std']:.3g}"


def check_monotone(summary: pd.DataFrame) -> tuple[bool, str]:
    failures = []
    curves = summary[(summary["role"] == "sweep") & ~summary["attack"].isin(["clean", "worst"])]
    for _, curve in curves.groupby(["attack", "targeted", "source"]):
        curve = curve.sort_values("eps_pixel").reset_index(drop=True)
        # Accuracy must not rise with ε; targeted success must not fall.
        sign = -1.0 if curve.loc[0, "metric"] == "success_rate" else 1.0
        for k in range(1, len(curve)):
            before, after = curve.loc[k - 1, "value"], curve.loc[k, "value"]
            if sign * (after - before) > tolerance(max(before, after), int(curve.loc[k, "n"])):
                failures.append(f"{_describe(curve.loc[k])}: {after:.3f}, {before:.3f} at the ε before")
    return not failures, "; ".join(failures) or "every curve is monotone in ε"


def check_iterative(summary: pd.DataFrame) -> tuple[bool, str] | None:
    """White-box BIM and PGD (and their vote variants) against white-box FGSM with the same head.

    Transfer rows are left out: an iterative attack crafted on another model overfits that model and
    transfers worse than one FGSM step (Kurakin, Goodfellow, Bengio 2017), so a weaker transfer PGD says
    nothing about masked gradients; check_blackbox holds transfer rows to the white-box ones."""
    failures, compared = [], 0
    untargeted = summary[
        (summary["role"] == "sweep") & ~summary["targeted"].astype(bool) & (summary["source"] == SELF)
    ]
    for suffix in ("", "-vote"):
        fgsm = untargeted[untargeted["attack"] == f"fgsm{suffix}"].set_index(["source", "eps_pixel"])["value"]
        for attack in (f"bim{suffix}", f"pgd{suffix}"):
            for _, row in untargeted[untargeted["attack"] == attack].iterrows():
                single = fgsm.get((row["source"], row["eps_pixel"]))
                if single is None:
                    continue
                compared += 1
                if row["value"] > single + tolerance(max(single, row["value"]), int(row["n"])):
                    failures.append(f"{_describe(row)}: {row['value']:.3f} vs FGSM {single:.3f}")
    if not compared:
        return None
    return not failures, (
        "; ".join(failures) or f"{compared} white-box comparisons, iterative never weaker than FGSM"
    )


def check_large_eps(summary: pd.DataFrame) -> tuple[bool, str] | None:
    rows = _rows(summary, role="check", eps_pixel=LARGE_EPS_PIXEL, targeted=False)
    rows = rows[rows["attack"] != "worst"]
    if rows.empty:
        return None
    best = rows.loc[rows["value"].idxmin()]
    passed = best["value"] <= CHANCE + tolerance(CHANCE, int(best["n"]))
    return bool(
        passed
    ), f"best of {', '.join(rows['attack'])} at ε_pixel={LARGE_EPS_PIXEL}: {best['value']:.3f}"


def check_targeted_large_eps(summary: pd.DataFrame) -> tuple[bool, str] | None:
    rows = _rows(summary, role="check", eps_pixel=LARGE_EPS_PIXEL, targeted=True)
    if rows.empty:
        return None
    best = rows.loc[rows["value"].idxmax()]
    floor = 1 - CHANCE
    passed = best["value"] >= floor - tolerance(floor, int(best["n"]))
    return bool(passed), (
        f"{best['attack']} targeted at ε_pixel={LARGE_EPS_PIXEL} ({int(best['steps'])} steps): success "
        f"{best['value']:.3f}, at least {floor:.1f} expected"
    )


def check_stronger_budget(summary: pd.DataFrame) -> tuple[bool, str] | None:
    checks = _rows(summary, role="check", attack="pgd", targeted=False)
    if checks.empty or checks["steps"].nunique() < 2:
        return None
    strong = checks.loc[checks["steps"].idxmax()]
    same_eps = checks[(checks["eps_pixel"] == strong["eps_pixel"]) & (checks["steps"] < strong["steps"])]
    if same_eps.empty:
        return None
    default = same_eps.iloc[0]
    drop = default["value"] - strong["value"]
    allowed = max(STRONGER_ATTACK_THRESHOLD, tolerance(default["value"], int(default["n"])))
    detail = (
        f"PGD at ε_std={default['eps_std']:.3g}: {default['value']:.3f} with {default['steps']} steps × "
        f"{default['restarts']} restarts, {strong['value']:.3f} with {strong['steps']} × "
        f"{strong['restarts']} (allowed drop {allowed:.3f})"
    )
    return bool(drop <= allowed), detail


def check_blackbox(summary: pd.DataFrame) -> tuple[bool, str] | None:
    """Square and transfer rows against the strongest white-box gradient attack at the same ε."""
    untargeted = summary[~summary["targeted"].astype(bool) & ~summary["attack"].isin(["clean", "worst"])]
    whitebox = untargeted[(untargeted["source"] == SELF) & (untargeted["attack"] != "square")]
    best = whitebox.groupby("eps_pixel")["value"].min()
    blackbox = untargeted[(untargeted["source"] != SELF) | (untargeted["attack"] == "square")]
    failures, compared = [], 0
    for _, row in blackbox.iterrows():
        if row["eps_pixel"] not in best.index or row["eps_pixel"] == 0:
            continue
        compared += 1
        white = float(best[row["eps_pixel"]])
        if row["value"] < white - tolerance(white, int(row["n"])):
            failures.append(f"{_describe(row)}: {row['value']:.3f} < white-box {white:.3f}")
    if not compared:
        return None
    return not failures, "; ".join(failures) or f"{compared} comparisons, black-box never stronger"


def check_vote(summary: pd.DataFrame) -> tuple[bool, str] | None:
    untargeted = summary[(summary["source"] == SELF) & ~summary["targeted"].astype(bool)]
    # The strongest routed attack at each ε (an ε can have several budgets: the more-steps check's cells).
    routed = untargeted.groupby(["attack", "eps_pixel", "role"])["value"].min()
    failures, compared = [], 0
    for _, row in untargeted[untargeted["attack"].str.endswith("-vote")].iterrows():
        plain = routed.get((row["attack"].removesuffix("-vote"), row["eps_pixel"], row["role"]))
        if plain is None or row["eps_pixel"] == 0:
            continue
        compared += 1
        if row["value"] < plain - tolerance(plain, int(row["n"])):
            failures.append(f"{_describe(row)}: {row['value']:.3f} < routed {plain:.3f}")
    if not compared:
        return None
    return not failures, "; ".join(failures) or f"{compared} comparisons, the vote attack never stronger"


@torch.no_grad()
def check_vote_surrogate(victim: Victim, eval_set: EvalSet, config: AttackConfig) -> tuple[bool, str] | None:
    """Does the routing-bypassed vote head classify? Accuracy on the clean examples above chance by more
    than the sampling slack; the agreement with the routed prediction is reported beside it."""
    if getattr(victim.model, "family", "") != "capsnet":
        return None
    device, correct, agree = torch.device(config.device), 0, 0
    for _, images, labels in eval_set.batches(config.batch_size, device):
        votes = predict(victim.model, images, "vote_logits")
        correct += int((votes == labels).sum())
        agree += int((votes == predict(victim.model, images)).sum())
    n = len(eval_set.labels)
    accuracy = correct / n
    passed = accuracy > CHANCE + tolerance(CHANCE, n)
    detail = (
        f"vote head: accuracy {accuracy:.3f} on the clean examples (chance {CHANCE:.2f}), same class as the "
        f"routed output for {agree / n:.3f}"
    )
    if not passed:
        detail += (
            "; the vote attacks are no adaptive attack here: their rows are left out of the other checks"
        )
    return passed, detail


def check_gradients(victim: Victim, eval_set: EvalSet, config: AttackConfig) -> tuple[bool, str]:
    """∇_x CE(head(x), y) for every head an attack differentiates (logits; vote_logits where it exists)."""
    heads = ("logits", "vote_logits") if has_vote_head(victim.model) else ("logits",)
    passed, details = True, []
    for head in heads:
        finite, zero = input_gradient_stats(victim.model, eval_set, config, head)
        ok = finite == 1.0 and zero < MAX_ZERO_GRADIENT_FRACTION
        passed &= ok
        details.append(f"{head}: finite for {finite:.3f} of examples, all-zero for {zero:.3f}")
    return passed, "; ".join(details)


def input_gradient_stats(model, eval_set: EvalSet, config: AttackConfig, head: str) -> tuple[float, float]:
    """(fraction of examples with finite gradients, fraction whose gradient is exactly zero everywhere)."""
    device = torch.device(config.device)
    finite = zero = 0
    for _, images, labels in eval_set.batches(config.batch_size, device):
        images.requires_grad_(True)
        loss = F.cross_entropy(model(images, output=head), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, images)
        flat = gradient.flatten(1)
        finite += int(torch.isfinite(flat).all(dim=1).sum())
        zero += int((flat == 0).all(dim=1).sum())
    n = len(eval_set.labels)
    return finite / n, zero / n


@torch.no_grad()
def check_deterministic(victim: Victim, eval_set: EvalSet, config: AttackConfig) -> tuple[bool, str]:
    images = eval_set.images[: config.batch_size].to(config.device)
    first, second = victim.model(images), victim.model(images)
    difference = float((first - second).abs().max())
    # Relative slack: GPU kernels may reorder float sums between two otherwise identical passes.
    passed = not victim.model.training and difference <= DETERMINISM_ATOL * max(1.0, float(first.abs().max()))
    return passed, f"training={victim.model.training}, max |Δlogit| between two passes {difference:.2e}"


def run_checks(
    summary: pd.DataFrame,
    victim: Victim,
    eval_set: EvalSet,
    config: AttackConfig,
    per_example: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every applicable check as a (model, check, passed, detail) row; inapplicable checks are left out.
    `per_example` (the sweep's rows) is needed for worst_case_converged only."""
    surrogate = check_vote_surrogate(victim, eval_set, config)
    if surrogate is not None and not surrogate[0]:  # the vote rows measure nothing about robustness
        summary = summary[~summary["attack"].str.endswith("-vote")]
    results = {
        "vote_surrogate_classifies": surrogate,
        "monotone_in_eps": check_monotone(summary),
        "iterative_vs_single_step": check_iterative(summary),
        "large_eps_to_chance": check_large_eps(summary),
        "targeted_large_eps_succeeds": check_targeted_large_eps(summary),
        "more_steps_and_restarts": check_stronger_budget(summary),
        "worst_case_converged": check_converged(per_example) if per_example is not None else None,
        "blackbox_weaker_than_whitebox": check_blackbox(summary),
        "vote_not_stronger_than_routed": check_vote(summary),
        "input_gradients": check_gradients(victim, eval_set, config),
        "deterministic_forward": check_deterministic(victim, eval_set, config),
    }
    rows = [(victim.name, name, bool(r[0]), r[1]) for name, r in results.items() if r is not None]
    return pd.DataFrame(rows, columns=list(CHECK_COLUMNS))

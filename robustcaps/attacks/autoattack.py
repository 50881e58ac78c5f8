"""AutoAttack "standard" (Croce & Hein, ICML 2020; RobustBench's number) from torchattacks 3.5.1's members.

torchattacks' own `AutoAttack` keeps its members' 10-iteration defaults, where the reference
(github.com/fra31/auto-attack, version "standard") runs, in this order:

- APGD-CE: 100 iterations, 1 restart;
- APGD-T: 100 iterations, 1 restart per target, targets = the top-k other classes (all 4 here);
- FAB-T: 100 iterations, the same targets, 1 restart per target;
- Square: 5,000 queries, 1 restart, p_init 0.8, no schedule rescaling;

each member attacks only what the ones before left correctly classified (torchattacks' `MultiAttack`), and
an example counts as robust only if all four fail. `autoattack` is that budget. `autoattack-fast` is the
same ensemble scaled to the sweep's `--steps` (Square: 50 queries per step, the standard ratio), for CPU
demos; it is recorded under its own name and never reported as AutoAttack.
"""

from __future__ import annotations

import torchattacks
from torch import nn

STANDARD = "autoattack"
FAST = "autoattack-fast"
ENSEMBLES = (STANDARD, FAST)
STANDARD_STEPS = 100
STANDARD_RESTARTS = 1
QUERIES_PER_STEP = 50  # the standard's 5,000 Square queries for 100 APGD iterations
SQUARE_P_INIT = 0.8
RHO = 0.75  # APGD's step-size-halving threshold (the reference's default)
LOSS = "ce+dlr-targeted+fab-targeted+margin"


def ensemble_budget(name: str, steps: int) -> tuple[int, int]:
    """(steps, restarts) of an ensemble's cell: the standard budget, or `steps` for the fast variant."""
    assert name in ENSEMBLES
    return (STANDARD_STEPS, STANDARD_RESTARTS) if name == STANDARD else (steps, STANDARD_RESTARTS)


def member_settings(steps: int, restarts: int, n_classes: int) -> dict[str, dict[str, object]]:
    """Each member's settings at a cell's (steps, restarts), as recorded in attack_config.json."""
    targets = n_classes - 1
    return {
        "apgd-ce": {"steps": steps, "restarts": restarts, "loss": "ce", "rho": RHO},
        "apgd-t": {
            "steps": steps,
            "restarts_per_target": restarts,
            "targets": targets,
            "loss": "dlr-targeted",
            "rho": RHO,
        },
        "fab-t": {"steps": steps, "restarts_per_target": restarts, "targets": targets},
        "square": {
            "queries": QUERIES_PER_STEP * steps,
            "restarts": restarts,
            "p_init": SQUARE_P_INIT,
            "loss": "margin",
        },
    }


def build_ensemble(
    model: nn.Module, eps: float, steps: int, restarts: int, n_classes: int, seed: int
) -> torchattacks.MultiAttack:
    """APGD-CE → APGD-T → FAB-T → Square on `model` at L∞ radius `eps` (pixels), each on what is left."""
    square_queries = QUERIES_PER_STEP * steps
    members = [
        torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed, loss="ce", rho=RHO
        ),
        torchattacks.APGDT(
            model,
            norm="Linf",
            eps=eps,
            steps=steps,
            n_restarts=restarts,
            seed=seed,
            rho=RHO,
            n_classes=n_classes,
        ),
        torchattacks.FAB(
            model,
            norm="Linf",
            eps=eps,
            steps=steps,
            n_restarts=restarts,
            seed=seed,
            multi_targeted=True,
            n_classes=n_classes,
        ),
        torchattacks.Square(
            model,
            norm="Linf",
            eps=eps,
            n_queries=square_queries,
            n_restarts=restarts,
            seed=seed,
            p_init=SQUARE_P_INIT,
            loss="margin",
            resc_schedule=False,
        ),
    ]
    return torchattacks.MultiAttack(members)

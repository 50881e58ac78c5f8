"""The numbers HSF18 reports, to print and plot next to ours (Table 2 and Fig. 3).

Hinton, Sabour, Frosst, "Matrix capsules with EM routing", ICLR 2018. Fig. 3 values are read off the
plot (≈); Table 2 values are printed in the paper. Errors and accuracies are fractions, not percent.
"""

from __future__ import annotations

import pandas as pd

# Table 2: the capsule model is stopped when its familiar error matches the CNN's, then novel error compared.
TABLE2 = {
    ("azimuth", "cnn"): {"familiar_error": 0.037, "novel_error": 0.200},
    ("azimuth", "capsnet"): {"familiar_error": 0.037, "novel_error": 0.135},
    ("elevation", "cnn"): {"familiar_error": 0.043, "novel_error": 0.178},
    ("elevation", "capsnet"): {"familiar_error": 0.043, "novel_error": 0.123},
}

# Fig. 3, ε in units of the standardised input: (family, attack, targeted, eps_std) -> value.
# Untargeted values are accuracy; targeted values are success rate averaged over target classes.
FIG3 = {
    ("cnn", "fgsm", False, 0.1): 0.57,
    ("cnn", "bim", False, 0.1): 0.52,
    ("capsnet", "fgsm", False, 0.1): 0.86,
    ("capsnet", "bim", False, 0.1): 0.84,
    ("cnn", "fgsm", False, 0.5): 0.03,
    ("cnn", "bim", False, 0.5): 0.05,
    ("capsnet", "fgsm", False, 0.5): 0.69,
    ("capsnet", "bim", False, 0.5): 0.55,
    ("cnn", "fgsm", True, 0.25): 0.59,
    ("cnn", "bim", True, 0.25): 0.85,
    ("capsnet", "fgsm", True, 0.25): 0.19,
    ("capsnet", "bim", True, 0.25): 0.24,
}

# Clean test error on the real smallNORB (§5): capsules 1.8% (1.4% with 13 crops), CNN 5.2%.
CLEAN_ERROR = {("capsnet", 1): 0.018, ("capsnet", 13): 0.014, ("cnn", 1): 0.052}


def fig3_frame() -> pd.DataFrame:
    """Fig. 3's points as rows: family, attack, targeted, eps_std, metric, value."""
    rows = [
        {
            "family": family,
            "attack": attack,
            "targeted": targeted,
            "eps_std": eps,
            "metric": "success_rate" if targeted else "accuracy",
            "value": value,
        }
        for (family, attack, targeted, eps), value in FIG3.items()
    ]
    return pd.DataFrame(rows)


def table2_frame() -> pd.DataFrame:
    """Table 2 as rows: split, family, familiar_error, novel_error."""
    rows = [{"split": split, "family": family, **values} for (split, family), values in TABLE2.items()]
    return pd.DataFrame(rows)

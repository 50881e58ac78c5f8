"""The results CSVs' columns and the values the report tests for, named once.

Each tuple below is one CSV's schema as its writer produces it; a column shared by several CSVs (`model`,
`split`) is one name. The report reads every column through these names, never through a string of its
own, so a renamed column fails at one place.
"""

from __future__ import annotations

# attacks/<name>/summary.csv (robustcaps.attacks.run.summarise): one row per attack cell
MODEL = "model"
RUN_DIR = "run_dir"  # the attacked run, relative to the results folder (models/<model>-full)
CHECKPOINT = "checkpoint"
ATTACK = "attack"
TARGETED = "targeted"
EPS_PIXEL = "eps_pixel"
EPS_STD = "eps_std"  # ε in units of the standardised input (HSF18 Fig. 3)
SOURCE = "source"  # the model a transfer attack was crafted on; "" (read from "self") for white-box
ROLE = "role"
STEPS = "steps"
METRIC = "metric"
VALUE = "value"
N = "n"
GIT_COMMIT = "git_commit"
DEVICE = "device"
DATASET = "dataset"  # the dataset identity (JSON) without where its files lie
WORST_OF = "worst_of"  # optional: which attacks the `worst` row took
SUMMARY = (
    MODEL,
    RUN_DIR,
    CHECKPOINT,
    ATTACK,
    TARGETED,
    EPS_PIXEL,
    EPS_STD,
    SOURCE,
    ROLE,
    STEPS,
    METRIC,
    VALUE,
    N,
    GIT_COMMIT,
    DEVICE,
    DATASET,
)
FAMILY = "family"  # added by the report from the model registry

# attacks/<name>/per_example.csv (robustcaps.attacks.sweep.EXAMPLE_COLUMNS)
EXAMPLE = "example"
LABEL = "label"
TARGET = "target"
PREDICTION = "prediction"
PER_EXAMPLE = (EXAMPLE, LABEL, ATTACK, TARGETED, TARGET, EPS_PIXEL, EPS_STD, SOURCE, ROLE, STEPS, PREDICTION)
# the report's per-example outcomes (tables.white_box_outcomes): 1 withstood / reached, 0 not
SCORE = "score"
OUTCOMES = (MODEL, FAMILY, ATTACK, TARGETED, EPS_STD, EXAMPLE, SCORE)

# attacks/<name>/checks.csv (robustcaps.attacks.checks.CHECK_COLUMNS)
CHECK = "check"
PASSED = "passed"
DETAIL = "detail"
CHECKS = (MODEL, CHECK, PASSED, DETAIL)

# clean/clean_error.csv
SPLIT = "split"
PART = "part"
CROPS = "crops"
ERROR = "error"
CLEAN_ERROR = (MODEL, FAMILY, SPLIT, PART, CROPS, ERROR, N)

# viewpoint/<split>.csv (robustcaps.study.viewpoint)
PROTOCOL = "protocol"  # "paper" (capsules stopped at the CNN's familiar error) or "reverse"
MATCHED_TO = "matched_to"
FAMILIAR_ERROR = "familiar_error"
NOVEL_ERROR = "novel_error"
FAMILIAR_GAP = "familiar_gap"
N_FAMILIAR = "n_familiar"
N_NOVEL = "n_novel"
# of the novel images, how many only the capsules / only the CNN of a matched pair got wrong
ONLY_CAPSULES_WRONG = "novel_only_capsules_wrong"
ONLY_CNN_WRONG = "novel_only_cnn_wrong"
COUNT_COLUMNS = (ONLY_CAPSULES_WRONG, ONLY_CNN_WRONG)
VIEWPOINT = (
    SPLIT,
    PROTOCOL,
    MODEL,
    FAMILY,
    CHECKPOINT,
    FAMILIAR_ERROR,
    NOVEL_ERROR,
    FAMILIAR_GAP,
    N_FAMILIAR,
    N_NOVEL,
)

# training/metrics.csv: run, model, family, split + the trainer's metrics
RUN = "run"
STEP = "step"
EPOCH = "epoch"
SECONDS = "seconds"  # wall seconds since the run started
TRAIN_ERROR, VAL_ERROR = "train_error", "val_error"

# values the report tests for
CLEAN, WORST = "clean", "worst"  # the pseudo-attacks: ε = 0, and the per-example worst case
SELF = "self"  # `source` of a white-box cell as the attacks write it
SWEEP, CHECK_ROLE = "sweep", "check"
ACCURACY, SUCCESS_RATE = "accuracy", "success_rate"
PAPER, REVERSE = "paper", "reverse"
FULL, TEST = "full", "test"

"""Training: a TrainConfig (`config`) trained into a run directory by `fit` (`train`, through `loop`), and
loaded back with `load_run` (`checkpoints`); `evaluation` gives test-time error, `losses` the spread loss.
"""

from robustcaps.training.checkpoints import LoadedRun, load_run
from robustcaps.training.config import TrainConfig, build_model, load_split
from robustcaps.training.evaluation import evaluate
from robustcaps.training.train import fit, resolve_device

__all__ = [
    "LoadedRun",
    "TrainConfig",
    "build_model",
    "evaluate",
    "fit",
    "load_run",
    "load_split",
    "resolve_device",
]

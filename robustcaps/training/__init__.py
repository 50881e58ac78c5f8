"""Training: `config` holds TrainConfig and what follows from it alone (the model, the split, the schedule).

The loop (`robustcaps.trainer`) and `fit` (`robustcaps.train`) build on it; nothing here imports them.
"""

from robustcaps.training.config import TrainConfig, build_model, load_split

__all__ = ["TrainConfig", "build_model", "load_split"]

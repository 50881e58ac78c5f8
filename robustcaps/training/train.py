"""Training: `fit` trains a TrainConfig into a run directory, resumable bit for bit.

The recipe (TrainConfig, HSF18's optimiser and schedule, the warm-up, validation on held-out training data)
is in `training/config.py`; the loop, its checkpoints and resuming in `training/loop.py`.

The loop keeps the uint8 (N, C, 48, 48) training tensors on the device and augments whole batches there
(`transforms.train_batch`): a per-sample DataLoader would cost more than the small models' forward pass.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustcaps.errors import RobustcapsError
from robustcaps.training import distributed
from robustcaps.training.config import TrainConfig


def resolve_device(name: str, world: distributed.World) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RobustcapsError("--device cuda: no CUDA device is visible; use --device cpu")
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def fit(config: TrainConfig, run_dir: str | Path, resume: bool = False) -> Path:
    """Train `config` into `run_dir` (config.json, metadata.json, metrics.csv, checkpoints/) and return it.

    With `resume`, continue from checkpoints/last.pt exactly where it stopped (same device: bit-identical).
    """
    from robustcaps.training.loop import (  # the loop imports torchvision: not at CLI start-up
        Session,
        run_session,
    )

    run_dir = Path(run_dir)
    world = distributed.init_world(resolve_device(config.device, distributed.World()).type)
    try:
        session = Session.open(config, run_dir, resume, world, resolve_device(config.device, world))
        run_session(session)
    finally:
        distributed.shutdown(world)
    return run_dir

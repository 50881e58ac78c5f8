"""torchrun with 2 gloo processes, batch B/2 each, takes the same steps as one process with batch B."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from robustcaps.io import read_json
from robustcaps.training import TrainConfig, build_model, checkpoints

ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(rendered_root, tmp_path):
    # Dropout off: it is the one random draw that is per rank by design (seeded seed + rank).
    common = ["train", "--data", str(rendered_root), "--model", "cnn-small", "--model-option", "dropout=0"]
    common += ["--steps", "10", "--batch-size", "8", "--max-per-part", "48", "--device", "cpu"]
    one = [sys.executable, "-m", "robustcaps", *common, "--out", str(tmp_path / "one")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = [*torchrun, "-m", "robustcaps", *common, "--out", str(tmp_path / "two")]
    processes = [
        subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in (one, two)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output.decode()[-3000:]

    a, b = (
        checkpoints.load_checkpoint(checkpoints.checkpoint_path(tmp_path / d, "last")) for d in ("one", "two")
    )
    assert a["world_size"] == 1 and b["world_size"] == 2 and len(b["rng"]) == 2
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)  # the initialisation both runs started from (seed 0, rank 0)
    start = build_model(TrainConfig.from_json(tmp_path / "one" / checkpoints.CONFIG_FILE)).state_dict()
    moved = max((a["model"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the comparison is between trained weights, not two copies of the initialisation
    metrics = [pd.read_csv(tmp_path / d / checkpoints.METRICS_FILE) for d in ("one", "two")]
    for column in ("step", "train_images"):  # each rank trained on its half, not on the whole batch
        pd.testing.assert_series_equal(metrics[0][column], metrics[1][column])
    torch.testing.assert_close(
        torch.tensor(metrics[1]["train_loss"].values),
        torch.tensor(metrics[0]["train_loss"].values),
        rtol=1e-4,
        atol=1e-6,
    )
    assert read_json(tmp_path / "two" / checkpoints.METADATA_FILE, "metadata")["world_size"] == 2

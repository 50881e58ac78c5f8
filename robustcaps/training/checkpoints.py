"""Run directories: config.json, metadata.json, metrics.csv and checkpoints, and loading a trained run back.

Every file here is written atomically (`robustcaps.io`), and metadata.json carries the commit, device and
library versions (`robustcaps.provenance`) that make every result traceable.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from robustcaps.data.norb import content_identity, dataset_identity
from robustcaps.data.standin.render import remade_data_root
from robustcaps.errors import RobustcapsError
from robustcaps.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from robustcaps.models import routing_cpu
from robustcaps.provenance import environment_metadata, shown_path
from robustcaps.training.config import TrainConfig, build_model

# ---- run directories: config, metadata, metrics, checkpoints ------------------------------------------

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.csv"
EVAL_FILE = "eval.csv"
CHECKPOINTS = ("best", "last")
# weights kept at each new lowest familiar error (TrainConfig.familiar_snapshots)
SNAPSHOT_PREFIX = "familiar-step"


def snapshot_name(step: int) -> str:
    return f"{SNAPSHOT_PREFIX}{step:07d}"


def is_checkpoint_name(which: str) -> bool:
    return which in CHECKPOINTS or (
        which.startswith(SNAPSHOT_PREFIX) and which.removeprefix(SNAPSHOT_PREFIX).isdigit()
    )


def checkpoint_path(run_dir: str | os.PathLike, which: str = "last") -> Path:
    assert is_checkpoint_name(which), which
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `atomic_torch_save`, loaded with weights_only=True (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise RobustcapsError(f"{path}: checkpoint missing; train the run (or use --which last)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip/pickle; all mean the same here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RobustcapsError(
            f"{path}: corrupt checkpoint ({reason}); delete it and retrain or resume"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise RobustcapsError(f"{path}: not a robustcaps checkpoint; delete it and retrain or resume")
    return state


def write_metadata(
    run_dir: str | os.PathLike,
    identity: dict[str, Any],
    device: str | torch.device,
    resumed_at_step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """metadata.json: commit, device, versions and the dataset's identity. A resumed run keeps the
    original and appends its own environment, after checking that the data is the same."""
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # as it reads back from JSON
    environment = environment_metadata(device) | (extra or {})
    environment |= {"utc": datetime.now(UTC).isoformat(timespec="seconds"), "argv": sys.argv}
    path = Path(run_dir) / METADATA_FILE
    if resumed_at_step is not None and path.exists():
        metadata = read_json(path, "run metadata")
        if metadata.get("dataset") != identity:
            raise RobustcapsError(
                f"{path}: the data differs from the data this run started on; resume with that data"
            )
        metadata.setdefault("resumed", []).append(environment | {"at_step": resumed_at_step})
    else:
        metadata = environment | {"dataset": identity}
    return atomic_write_json(path, metadata)


def write_metrics(run_dir: str | os.PathLike, history: list[dict[str, Any]]) -> Path:
    """metrics.csv, rewritten whole from the checkpointed history, so a resumed run never repeats a row."""
    import pandas as pd

    return atomic_write_text(Path(run_dir) / METRICS_FILE, pd.DataFrame(history).to_csv(index=False))


# ---- random number generator states, stored as tensors and plain types for weights_only loading -----


def seed_everything(seed: int) -> None:
    """Seed torch (every CUDA device too), numpy and Python's `random`."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global torch (and CUDA), numpy and Python RNG states."""
    import random

    import numpy as np

    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": python_version, "state": list(python_state), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["position"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ---- loading a trained run ----------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained model (eval mode) with the TrainConfig and metadata that made it."""

    model: torch.nn.Module
    config: TrainConfig
    metadata: dict[str, Any]
    run_dir: Path
    which: str = "best"
    step: int = 0
    stop_reason: str = ""


def load_run(
    run_dir: str | os.PathLike,
    which: str = "best",
    device: str | torch.device = "cpu",
    data: str | os.PathLike | None = None,
    option: str = "--which",
) -> LoadedRun:
    """Rebuild the model of `run_dir` from config.json alone and load `checkpoints/{which}.pt` into it.
    `option`: the command-line option that chose `which`, named in the error when it is not a checkpoint.

    `data`: where the run's dataset is on this machine (a committed or copied run names the directory it
    was trained from); it must be the same dataset, checked against metadata.json (`check_same_dataset`).
    """
    if not is_checkpoint_name(which):
        raise RobustcapsError(
            f"{option} {which!r}: choose one of {', '.join(CHECKPOINTS)} or a {SNAPSHOT_PREFIX}N snapshot"
        )
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RobustcapsError(f"{run_dir}: no such run directory")
    config = TrainConfig.from_json(run_dir / CONFIG_FILE)
    metadata = read_json(run_dir / METADATA_FILE, "run metadata")
    named = "--data"
    if data is None and config.data is not None:
        trained_on = Path(config.data).expanduser()  # an exported run names its data under ~/
        if trained_on.is_dir():
            config = replace(config, data=str(trained_on))
        else:
            data = _remade_dataset(run_dir, config.data, metadata)  # None: fails when the data are read
            named = "the stand-in rendered again at"
    if data is not None:
        check_same_dataset(metadata, data, named)
        config = replace(config, data=str(data))
    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path, device)
    model = build_model(config)
    if hasattr(model, "use_routing"):  # the plain way (any device), on a CPU in the C++ kernel: same function
        model.use_routing(
            "cpu" if torch.device(device).type == "cpu" and routing_cpu.available() else "plain"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RobustcapsError(f"{path}: weights do not fit {run_dir / CONFIG_FILE} ({first})") from None
    model.to(device).eval()
    return LoadedRun(
        model, config, metadata, run_dir, which, int(state["step"]), state.get("stop_reason", "")
    )


def _remade_dataset(run_dir: Path, trained_on: str, metadata: dict[str, Any]) -> Path | None:
    """The data directory a run names is not on this machine (a committed or copied run): a rendered
    stand-in is rendered again into the cache (the same bytes on every machine); other data are not."""
    root = remade_data_root(metadata.get("dataset", {}))
    if root is not None:
        print(f"{run_dir}: trained on the rendered stand-in at {trained_on}; using {root}", file=sys.stderr)
    return root


def check_same_dataset(metadata: dict[str, Any], root: str | os.PathLike, named: str = "--data") -> None:
    """`--data root` must hold the dataset the run was trained on: its identity (official MD5s, or the
    rendered stand-in's generator, seed, options and SHA-256s) equals the one in metadata.json.
    `named`: how the errors introduce `root` (where it did not come from --data)."""
    if not Path(root).is_dir():
        raise RobustcapsError(f"{named} {root}: no such directory")
    here = json.loads(json.dumps(content_identity(dataset_identity(root)), sort_keys=True, default=str))
    recorded = metadata.get("dataset", {})
    differ = sorted(key for key in here if recorded.get(key) != here[key])
    if differ:
        raise RobustcapsError(
            f"{named} {root}: not the dataset this run was trained on ({', '.join(differ)} differ from its "
            "metadata.json)"
        )


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, which: str = "best") -> Path:
    """A trained run in a form small enough to commit: config.json, metadata.json, metrics.csv, eval.csv
    (when present) and `checkpoints/{which}.pt` holding the weights and step only (no optimiser or RNG
    state: it cannot resume, but `load_run`, `robustcaps eval` and `robustcaps attack` read it)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = load_checkpoint(checkpoint_path(run_dir, which))
    for name in (METRICS_FILE, EVAL_FILE):
        if (run_dir / name).is_file():
            atomic_write_bytes(out_dir / name, (run_dir / name).read_bytes())
    # the data directory as a committed record shows it (`~/...`): no user name or machine layout
    config = read_json(run_dir / CONFIG_FILE, "run config")
    metadata = read_json(run_dir / METADATA_FILE, "run metadata")
    if config.get("data"):
        config["data"] = shown_path(config["data"])
    if metadata.get("dataset", {}).get("root"):
        metadata["dataset"] = {**metadata["dataset"], "root": shown_path(metadata["dataset"]["root"])}
    atomic_write_json(out_dir / CONFIG_FILE, config)
    atomic_write_json(out_dir / METADATA_FILE, metadata)
    save_weights(checkpoint_path(out_dir, which), state["model"], state["step"], state.get("stop_reason", ""))
    return out_dir


def save_weights(path: str | os.PathLike, weights: dict[str, Any], step: int, stop_reason: str = "") -> Path:
    """A weights-only checkpoint (model state, step, stop reason; no optimiser or RNG state): `load_run`
    reads it, the trainer cannot resume from it. Snapshots and exported runs are written this way."""
    return atomic_torch_save(path, {"model": weights, "step": step, "stop_reason": stop_reason})

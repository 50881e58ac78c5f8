"""Run directories: atomic writes, and the metadata that makes every result traceable.

Every file in results/ and every checkpoint is written through `atomic_write_*`: a temporary
file in the same directory, fsync, then `os.replace`, so a crash never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from robustcaps.errors import RobustcapsError

_UMASK = os.umask(0)
os.umask(_UMASK)

LIBRARIES = ("robustcaps", "torch", "torchvision", "torchattacks", "numpy", "pandas", "seaborn", "click")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


# What the pipeline itself writes into the tracked tree; changes there do not make the code dirty.
GENERATED_PATHS = ("results", "benchmarks/results")


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The current commit, with `+dirty` when tracked code has uncommitted changes; 'unknown' outside git.

    $ROBUSTCAPS_GIT_COMMIT, when set, is the answer: a copy of the tree sent to a GPU machine may carry no
    .git or a stale one (one such copy reported its session's first commit, +dirty, for code committed
    later), so the sender names the commit it sent.

    Files under GENERATED_PATHS are left out of the dirty check: `make demo` rewrites the committed
    results/ while it runs, and that must not mark its own numbers as coming from modified code.
    """
    if os.environ.get("ROBUSTCAPS_GIT_COMMIT"):
        return os.environ["ROBUSTCAPS_GIT_COMMIT"]
    cwd = Path(repo) if repo else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        excluded = [f":(top,exclude){path}" for path in GENERATED_PATHS]
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: str | torch.device = "cpu") -> str:
    """A human name for where the numbers came from: the GPU's name, or the CPU and its core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{os.cpu_count()} ({socket.gethostname()})"


def environment_metadata(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Commit, device and library versions: attach to every run and every results file."""
    return {
        "git_commit": git_commit(),
        "device": str(torch.device(device)),
        "device_name": device_description(device),
        "versions": library_versions(),
    }


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


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one RobustcapsError line naming the file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RobustcapsError(
            f"{path}: no {what} here; is this a run directory made by `robustcaps train`?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RobustcapsError(
            f"{path}: cannot read the {what} ({error}); restore it or retrain the run"
        ) from None
    if not isinstance(obj, dict):
        raise RobustcapsError(f"{path}: the {what} is not a JSON object; restore it or retrain the run")
    return obj


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
    import sys
    from datetime import datetime, timezone

    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # as it reads back from JSON
    environment = environment_metadata(device) | (extra or {})
    environment |= {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv}
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
    config: Any  # robustcaps.train.TrainConfig
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
    from robustcaps.train import TrainConfig, build_model  # train imports runs: import here, not at the top

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
    if data is None and config.data is not None and not Path(config.data).is_dir():
        data = _remade_dataset(run_dir, config.data, metadata)  # None: fails when the data are read
        named = "the stand-in rendered again at"
    if data is not None:
        check_same_dataset(metadata, data, named)
        config = replace(config, data=str(data))
    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path, device)
    model = build_model(config)
    if hasattr(model, "use_routing"):  # a loaded capsnet routes the plain way (same function, any device)
        model.use_routing("plain")
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
    from robustcaps.data.render import remade_data_root

    root = remade_data_root(metadata.get("dataset", {}))
    if root is not None:
        print(f"{run_dir}: trained on the rendered stand-in at {trained_on}; using {root}", file=sys.stderr)
    return root


def check_same_dataset(metadata: dict[str, Any], root: str | os.PathLike, named: str = "--data") -> None:
    """`--data root` must hold the dataset the run was trained on: its identity (official MD5s, or the
    rendered stand-in's generator, seed, options and SHA-256s) equals the one in metadata.json.
    `named`: how the errors introduce `root` (where it did not come from --data)."""
    from robustcaps.data.norb import content_identity, dataset_identity

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
    for name in (CONFIG_FILE, METADATA_FILE, METRICS_FILE, EVAL_FILE):
        if (run_dir / name).is_file():
            atomic_write_bytes(out_dir / name, (run_dir / name).read_bytes())
    save_weights(checkpoint_path(out_dir, which), state["model"], state["step"], state.get("stop_reason", ""))
    return out_dir


def save_weights(path: str | os.PathLike, weights: dict[str, Any], step: int, stop_reason: str = "") -> Path:
    """A weights-only checkpoint (model state, step, stop reason; no optimiser or RNG state): `load_run`
    reads it, the trainer cannot resume from it. Snapshots and exported runs are written this way."""
    return atomic_torch_save(path, {"model": weights, "step": step, "stop_reason": stop_reason})

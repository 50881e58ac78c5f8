"""The rendered stand-in for smallNORB: 50 toy-like 3D objects shot on the smallNORB viewpoint grid, written
as the six official files (same names, same binary format), so every command taking `--data` runs alike on
it and on the real data.

The grid (Huang & LeCun 2005): 5 categories x 10 instances (train {4,6,7,8,9}, test {0,1,2,3,5}),
9 elevations 30°..70° step 5° (info 0..8), 18 azimuths 0°..340° step 20° (info 0,2,..,34), 6 lightings,
2 cameras a stereo baseline apart, 96x96 uint8 grey levels. The object turns on a turntable (azimuth), the
cameras rise (elevation), the lights stay put in the room, so each azimuth shows other sides of a
front/back-asymmetric object, other self-occlusions and other shading: a real viewpoint-generalisation test.

Renderer: our own numpy rasteriser (`raster.py`), not OpenGL. It installs with pip, runs on CI and on
air-gapped machines with no GPU or driver, and gives byte-identical files on every machine for a seed
(IEEE-exact elementwise float64 arithmetic, libm trigonometry rounded to a coarse grid, integer z-buffer
keys, no BLAS, no threads sharing one computation; the worker count does not change the bytes).
Geometry does not depend on lighting, so each (instance, elevation, azimuth, camera) is rasterised once
(2x supersampled) and shaded for all its lightings: 16,200 rasterisations for the full grid.

Nuisance, drawn from `seed` for the full grid in a fixed order (so a subset shows the same images):
per stereo pair a scale (±8%) and an image offset (±3 px), per image a light gain and a background grey.

Row order: the canonical order (category, instance, elevation, azimuth, lighting) permuted by one fixed
permutation that depends only on the number of rows, so the train and test cat files are identical, as in
the official release, and any prefix of the rows mixes all categories.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robustcaps.data.norb import FILE_NAMES, KINDS, MANIFEST, PARTS, cache_root, write_matrix
from robustcaps.data.norb_format import file_digest
from robustcaps.data.standin.scene import (  # noqa: F401 (INSTANCES and render_elevation: re-exported for callers)
    AZIMUTHS,
    ELEVATIONS,
    INSTANCES,
    LIGHTINGS,
    RenderConfig,
    render_elevation,
)
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_json

GENERATOR_VERSION = "1.0"
# (elevations, azimuths, lightings) per preset; every class and instance is always in. full: 24,300 stereo
# pairs per part; small: 5,400; tiny: 900. Each keeps the azimuth and elevation splits' familiar and novel
# viewpoints non-empty.
SIZES = {
    "full": (ELEVATIONS, AZIMUTHS, LIGHTINGS),
    "small": ((0, 1, 2, 4, 6, 8), AZIMUTHS, (0, 3)),
    "tiny": ((0, 5), AZIMUTHS, (0,)),
}
ORDER_SEED = 24300


def make_config(
    seed: int = 0, size: str = "full", elevations=None, azimuths=None, lightings=None, supersample: int = 2
) -> RenderConfig:
    """A size preset, its elevations / azimuths / lightings optionally replaced; bad values are errors."""
    if size not in SIZES:
        raise RobustcapsError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    chosen = dict(zip(("elevations", "azimuths", "lightings"), SIZES[size], strict=True))
    for name, values, valid in (
        ("elevations", elevations, ELEVATIONS),
        ("azimuths", azimuths, AZIMUTHS),
        ("lightings", lightings, LIGHTINGS),
    ):
        if values is None:
            continue
        values = tuple(sorted(set(int(v) for v in values)))
        if not values or not set(values) <= set(valid):
            raise RobustcapsError(f"--{name} {list(values)}: expected a non-empty subset of {list(valid)}")
        chosen[name] = values
    if supersample not in (1, 2, 3, 4):
        raise RobustcapsError(f"--supersample {supersample}: expected 1, 2, 3 or 4")
    return RenderConfig(seed=int(seed), supersample=supersample, **chosen)


def row_order(n: int) -> np.ndarray:
    """Destination row of each canonical row: a fixed permutation of n rows (see the module docstring)."""
    return np.random.default_rng([ORDER_SEED, n]).permutation(n)


def _tasks(config: RenderConfig, part: str) -> list[tuple[int, int, int]]:
    return [(c, i, e) for c in range(5) for i in INSTANCES[part] for e in config.elevations]


def _render_task(args: tuple[RenderConfig, int, int, int]) -> np.ndarray:
    return render_elevation(*args)


def render_part(config: RenderConfig, part: str, workers: int = 1, progress: bool = True):
    """dat uint8 (N, 2, 96, 96), cat int32 (N,), info int32 (N, 4) of one part, rows in `row_order`."""
    tasks = _tasks(config, part)
    per_task = len(config.azimuths) * len(config.lightings)
    n = len(tasks) * per_task
    dest = row_order(n)
    dat = np.empty((n, 2, config.image_size, config.image_size), dtype=np.uint8)
    cat, info = np.empty(n, dtype=np.int32), np.empty((n, 4), dtype=np.int32)
    grid = np.array(
        [(a, l) for a in config.azimuths for l in config.lightings], dtype=np.int32
    )  # (per_task, 2)
    bar = tqdm(total=len(tasks), desc=f"render {part} (object x elevation)", disable=not progress)
    pool = ProcessPoolExecutor(workers, _context()) if workers > 1 else None
    args = [(config, *task) for task in tasks]
    results = pool.map(_render_task, args) if pool else map(_render_task, args)
    try:
        for k, ((category, instance, elevation), images) in enumerate(zip(tasks, results, strict=True)):
            rows = dest[k * per_task : (k + 1) * per_task]
            dat[rows] = images.reshape(per_task, 2, config.image_size, config.image_size)
            cat[rows] = category
            info[rows] = np.column_stack([np.full(per_task, instance), np.full(per_task, elevation), grid])
            bar.update()
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    return dat, cat, info


def _context():
    # fork is cheap and the workers only run numpy; elsewhere (macOS, Windows) spawn is the safe default
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _options(config: RenderConfig, size: str) -> dict:
    options = asdict(config)
    options.pop("seed")
    return {"size": size, **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}


def render_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    size: str = "full",
    elevations=None,
    azimuths=None,
    lightings=None,
    progress: bool = True,
    workers: int | None = None,
    supersample: int = 2,
) -> Path:
    """Render both parts into `out_dir` as the six official-name files plus `manifest.json`; returns out_dir.

    The manifest is removed first and written last, so a directory with a manifest is complete. `workers`
    processes (default: one per core, at most 16) share the views; the bytes do not depend on it.
    `supersample` 1 renders aliased edges about 3x faster (for tests).
    """
    config = make_config(seed, size, elevations, azimuths, lightings, supersample)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RobustcapsError(f"--out {out_dir}: exists and is not a directory; choose another path")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    workers = workers or default_workers()
    sha256, rows = {}, {}
    for part in PARTS:
        arrays = dict(zip(KINDS, render_part(config, part, workers, progress), strict=True))
        rows[part] = len(arrays["cat"])
        for kind in KINDS:
            path = write_matrix(out_dir / FILE_NAMES[part, kind], arrays[kind])
            sha256[path.name] = file_digest(path, "sha256")
        del arrays
    manifest = _manifest(config, size, rows, sha256)
    atomic_write_json(out_dir / MANIFEST, manifest)
    return out_dir


def _manifest(config: RenderConfig, size: str, rows: dict[str, int], sha256: dict[str, str]) -> dict:
    """What `dataset_identity` reports for this set: generator version, seed, options and file hashes."""
    return {
        "generator": "robustcaps.data.render",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "options": _options(config, size),
        "instances": {part: list(ids) for part, ids in INSTANCES.items()},
        "rows": rows,
        "row_order": "canonical (category, instance, elevation, azimuth, lighting) permuted by "
        f"numpy default_rng([{ORDER_SEED}, rows]).permutation(rows)",
        "sha256": sha256,
    }


def default_workers() -> int:
    """One process per core, at most 16."""
    return min(16, os.cpu_count() or 1)


def default_data_path(size: str = "small", seed: int = 0) -> Path:
    """Where `default_data_root` keeps the rendered set of this size and seed (nothing is rendered here)."""
    return cache_root() / f"rendered-{size}-seed{seed}"


def default_data_root(size: str = "small", seed: int = 0, progress: bool = True) -> Path:
    """A rendered set in the cache (`$ROBUSTCAPS_CACHE`, else ~/.cache/robustcaps), rendered on first use.

    A complete set (manifest present, files of the recorded names) is reused. A new one is rendered into a
    temporary directory and renamed into place, so two processes never see half a dataset.
    """
    return _cached_render(default_data_path(size, seed), make_config(seed, size), size, progress)


def remade_data_root(identity: dict, progress: bool = True) -> Path | None:
    """The rendered set a run's metadata.json names (its "dataset" identity), from the cache, rendered there
    first if missing; None when `identity` is not a set this generator version can remake (real smallNORB,
    another version, options it does not offer).

    Rendering is deterministic to the byte on every machine, so a committed or copied run whose data
    directory is not here (results/models/*, results/gpu/models/*) can be evaluated and attacked anyway;
    the caller still compares the SHA-256s (`training.checkpoints.check_same_dataset`).
    """
    options, seed = identity.get("options"), identity.get("seed")
    if identity.get("kind") != "rendered" or identity.get("generator_version") != GENERATOR_VERSION:
        return None
    if not isinstance(options, dict) or options.get("size") not in SIZES or not isinstance(seed, int):
        return None
    size = options["size"]
    try:
        config = make_config(
            seed,
            size,
            options.get("elevations"),
            options.get("azimuths"),
            options.get("lightings"),
            options.get("supersample", 2),
        )
    except (RobustcapsError, TypeError, ValueError):
        return None
    if _options(config, size) != options:  # a renderer constant (focal, distance, ...) it no longer has
        return None
    if config == make_config(seed, size):
        return _cached_render(default_data_path(size, seed), config, size, progress)
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return _cached_render(cache_root() / f"rendered-{size}-seed{seed}-{digest}", config, size, progress)


def _cached_render(root: Path, config: RenderConfig, size: str, progress: bool) -> Path:
    if _complete(root, config, size):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        render_dataset(
            tmp,
            seed=config.seed,
            size=size,
            elevations=config.elevations,
            azimuths=config.azimuths,
            lightings=config.lightings,
            progress=progress,
            supersample=config.supersample,
        )
        if root.exists() and not _complete(root, config, size):  # an incomplete leftover
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:  # another process renamed its complete copy into place first
            if not _complete(root, config, size):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _complete(root: Path, config: RenderConfig, size: str) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    same = manifest.get("generator_version") == GENERATOR_VERSION and manifest.get("seed") == config.seed
    same = same and manifest.get("options") == _options(config, size)
    return same and all((root / name).is_file() for name in manifest.get("sha256", {}))

"""Training and inference speed and peak memory of every registered model.

    python benchmarks/bench_models.py                                   # CPU: every model, batch 64 and 256
    python benchmarks/bench_models.py --models capsnet-small,cnn-small --batch-sizes 64 --modes eager
    python benchmarks/bench_models.py --device cuda --modes eager,compile
    python benchmarks/bench_models.py --models capsnet --routing plain,fused,triton --modes compile
    python benchmarks/bench_models.py --device cuda --models capsnet --routing fused --modes cudagraphs
    python benchmarks/bench_models.py --device cuda --configs capsnet:triton:64:eager:train --profile OUT
    python benchmarks/bench_models.py --configs capsnet-small:cpu:64:compile:train --flop-rate

Modes: eager; compile (torch.compile, default mode, as training compiles); cudagraphs (compile in
torch.compile's "reduce-overhead" mode, which replays the compiled kernels as CUDA graphs: at batch 64 a
capsnet step launches hundreds of small kernels, so launch overhead may be a real part of the step; on the
CPU it is the compile mode).

Training is one forward + backward + Adam step (cross-entropy on the logits); inference is a no-grad
forward in eval mode. Each configuration runs in its own process, so that peak memory belongs to it:
torch.cuda.max_memory_allocated on CUDA, the process's peak resident set (ru_maxrss, which includes
Python and torch themselves) on CPU. On CUDA `--in-process` runs them one after another in this
process instead (peak statistics reset between them), saving a CUDA start per configuration.
`--profile DIR`: after the timed steps, a few more under torch.profiler; the operators and kernels with
the most self time on the device go to DIR/profile-<configuration>.txt (where a step's time goes, for a
path slower than its estimate). `--deadline` (Unix seconds) skips what cannot start in time, for a GPU
lease of fixed length. `--flop-rate`: the machine's demonstrated rate first (a large float32 matrix
product), then each row's model FLOPs per second (`robustcaps models`' count per image, three times that
for a training image) and their fraction of that rate. Prints a table and merges every row, as soon as
it is measured, into benchmarks/results/<device-slug>.csv with the device name, torch version and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from robustcaps.io import atomic_write_text
from robustcaps.models import create_model, list_models, model_info
from robustcaps.models.common import compile_model
from robustcaps.provenance import device_description, git_commit

RESULTS = Path(__file__).resolve().parent / "results"
KEY = ["model", "routing", "recompute", "batch_size", "mode", "phase", "threads", "malloc", "tf32", "amp"]
# glibc serves every block over 32 MiB with a fresh mmap, so each large vote tensor costs page faults on first
# touch (measured here: 120 ms to allocate and fill 42 MB, 10 ms to refill it). "no-mmap" keeps freed blocks
# in the heap for reuse, like the caching allocator torch uses on CUDA.
MALLOC = {"default": {}, "no-mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of `step` after `warmup` untimed calls (which also trigger compilation)."""
    for _ in range(warmup):
        step()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return (time.perf_counter() - start) / steps


def measure(
    model_name: str,
    routing: str,
    batch: int,
    mode: str,
    phase: str,
    device: str,
    warmup: int,
    steps: int,
    check: bool = False,
    tf32: str = "default",
    recompute: str = "-",
    amp: str = "none",
    profile: str | None = None,
) -> dict:
    """One configuration, in this process: images per second and peak memory. `routing` "-": not a capsnet.
    `check`: afterwards, compare the timed model's logits (and, in training, gradients) on the same batch
    with the plain path in float64 (`float64_errors`). `tf32` "off": no TF32 in cuDNN convolutions (torch
    allows it there by default; matrix products are full float32 by default either way). `amp` "bf16": the
    forward under bfloat16 autocast, as `robustcaps train --amp bf16` (EM routing itself stays float32)."""
    torch.backends.cudnn.allow_tf32 = tf32 == "default"
    device = torch.device(device)

    def autocast():
        if amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    torch.manual_seed(0)
    model = create_model(model_name, **({} if routing == "-" else {"routing": routing})).to(device)
    if recompute != "-":
        model.use_recompute(recompute)
    setting = {"compile": "default", "cudagraphs": "reduce-overhead"}
    run = compile_model(model, setting[mode]) if mode in setting else model
    graphs = mode == "cudagraphs" and device.type == "cuda"
    x = torch.rand(batch, 1, 32, 32, device=device)
    y = torch.randint(0, 5, (batch,), device=device)
    if phase == "train":
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

        def step():
            optimiser.zero_grad(set_to_none=True)
            if graphs:  # a new iteration: the graphs' previous outputs are no longer needed
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                logits = run(x)
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
            optimiser.step()

    else:
        model.eval()

        def step():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad(), autocast():
                run(x)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, warmup, steps)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:  # Linux reports ru_maxrss in KiB
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"
    result = {
        "images_per_s": batch / seconds,
        "seconds_per_step": seconds,
        "peak_memory_mb": peak,
        "memory_kind": kind,
    }
    if profile:
        profile_steps(step, device, Path(profile))
    if check and routing != "-":
        result.update(float64_errors(model, run, model_name, x, y, phase == "train", autocast))
    return result


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The float32 rate these threads demonstrate on a large matrix product (GFLOP/s, best of `repeats`)."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def profile_steps(step, device: torch.device, path: Path, steps: int = 3, rows: int = 40) -> None:
    """`steps` more steps under torch.profiler; the operators and kernels with the most self time on the
    device (on a CPU, CPU time) written as a table to `path`, with the total per step for scale."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronise(device)
    events = profiler.key_averages()
    on_device = device.type == "cuda"
    column = "self_device_time_total" if on_device else "self_cpu_time_total"
    total_ms = sum(getattr(event, column) for event in events) / 1000 / steps
    where = "device" if on_device else "CPU"
    header = f"{path.stem}: {steps} steps; self {where} time per step, all operators: {total_ms:.2f} ms"
    atomic_write_text(path, f"{header}\n{events.table(sort_by=column, row_limit=rows)}\n")


def float64_errors(model, run, model_name: str, x, y, train: bool, autocast=contextlib.nullcontext) -> dict:
    """How far the timed computation (any routing path, eager or compiled, float32 or under `autocast`) is
    from the plain path in float64 with the same weights on the same batch: max |Δlogit| / max(1, max
    |logit|), and for training ‖Δ∇‖ / ‖∇‖ over all parameters. The plain float32 row is the yardstick."""
    reference = create_model(model_name, routing="plain").to(x.device, torch.float64)
    reference.load_state_dict(model.state_dict())
    reference.train(model.training)

    def logits_and_grads(net, module, inputs, context):
        module.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train):
            with context():
                logits = net(inputs)
            logits = logits.to(inputs.dtype)  # autocast may return bfloat16 logits
            if not train:
                return logits.detach(), None
            torch.nn.functional.cross_entropy(logits, y).backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in module.parameters()])

    ref_logits, ref_grads = logits_and_grads(reference, reference, x.double(), contextlib.nullcontext)
    torch.compiler.cudagraph_mark_step_begin()  # under "cudagraphs": the timed steps' outputs are done with
    logits, grads = logits_and_grads(run, model, x, autocast)
    scale = max(1.0, float(ref_logits.abs().max()))
    errors = {"err_logits_vs_f64": float((logits.double() - ref_logits).abs().max()) / scale}
    if train:
        errors["err_grads_vs_f64"] = float((grads.double() - ref_grads).norm() / ref_grads.norm())
    return errors


def run_isolated(config: dict, malloc: str, timeout: float) -> dict:
    """`measure` in a fresh process; a configuration that fails or times out is reported, not fatal."""
    command = [sys.executable, __file__, "--one", json.dumps(config)]
    env = {**os.environ, **MALLOC[malloc]}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:g} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# Seconds a configuration may need, compilation included: a configuration that cannot finish before the
# deadline is skipped rather than cut off half-way (measured on the 2-core CPU; GPU compiles are faster).
EXPECTED_SECONDS = {"eager": 20, "compile": 90, "cudagraphs": 90}


def run_here(config: dict, timeout: float) -> dict:
    """`measure` in this process, for CUDA: peak memory is reset per configuration, caches emptied after."""
    import signal

    def stop(*_):
        raise TimeoutError(f"timeout after {timeout:.0f} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(max(1, int(timeout)))
    try:
        result = measure(**config)
        if not config["device"].startswith("cuda"):  # ru_maxrss is the whole process's, all configs so far
            result.update(peak_memory_mb=float("nan"), memory_kind="not measured (in-process)")
        return result
    except Exception as error:  # a failing configuration is a row of the table, not the end of the run
        traceback.print_exc()  # the whole story (e.g. a Triton compile error) goes to the session log
        first = (str(error).strip().splitlines() or [""])[0][:200]
        return {"error": f"{type(error).__name__}: {first}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        gc.collect()
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--models", default=",".join(list_models()), help="comma-separated model names")
    parser.add_argument("--batch-sizes", default="64,256", help="comma-separated batch sizes")
    parser.add_argument(
        "--modes",
        default="eager,compile",
        help="eager, compile (torch.compile) and/or cudagraphs (see above)",
    )
    parser.add_argument("--phases", default="train,infer", help="train and/or infer")
    parser.add_argument(
        "--routing",
        default="plain",
        help="capsnet EM routing paths, comma-separated: plain, fused, triton, cpu (cnn: '-')",
    )
    parser.add_argument(
        "--malloc", default="default", help="CPU allocator settings: default, no-mmap or both"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps first (compile happens here; it recompiles once on the second call)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="every configuration in this process, one by one (CUDA; on CPU peak memory is not measured)",
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="Unix time after which no configuration is started"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="CSV to merge into (default: results/<device>.csv)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="capsnet rows: also the error against the plain path in float64 (columns err_*_vs_f64)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="explicit MODEL:ROUTING:BATCH:MODE:PHASE list, comma-separated, run in this order "
        "(replaces the grid; ROUTING '-' for a CNN)",
    )
    parser.add_argument(
        "--tf32",
        default="default",
        choices=("default", "off"),
        help="off: cuDNN convolutions in full float32 (torch's default lets them use TF32 on GPUs)",
    )
    parser.add_argument(
        "--recompute",
        default="all",
        choices=("all", "first", "none"),
        help="fused and triton routing: which routed layers recompute in backward (CapsNet.use_recompute)",
    )
    parser.add_argument(
        "--amp",
        default="none",
        choices=("none", "bf16"),
        help="bf16: forward under bfloat16 autocast, as train --amp bf16 (EM routing computes in float32)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="folder for a torch.profiler table of each configuration (profile-<configuration>.txt)",
    )
    parser.add_argument(
        "--flop-rate",
        action="store_true",
        help="measure the CPU's matrix-product GFLOP/s first; each row gets its model GFLOP/s and fraction",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    unknown = set(args.models.split(",")) - set(list_models())
    if unknown:
        sys.exit(f"--models: unknown {', '.join(sorted(unknown))}; choose from {', '.join(list_models())}")
    name = device_description(args.device)
    meta = {"device": args.device, "device_name": name, "torch": torch.__version__, "commit": git_commit()}
    mallocs = list(MALLOC) if args.malloc == "both" else [args.malloc]
    models = [
        (model, routing)
        for model in args.models.split(",")
        for routing in (args.routing.split(",") if model.startswith("capsnet") else ["-"])
    ]
    grid = itertools.product(
        models,
        [int(b) for b in args.batch_sizes.split(",")],
        args.modes.split(","),
        args.phases.split(","),
        mallocs,
    )
    if args.configs:
        bad = [c for c in args.configs.split(",") if len(c.split(":")) != 5 or not c.split(":")[2].isdigit()]
        if bad:
            sys.exit(f"--configs: {bad[0]!r} is not MODEL:ROUTING:BATCH:MODE:PHASE")
        grid = [
            ((model, routing), int(batch), mode, phase, malloc)
            for model, routing, batch, mode, phase in (c.split(":") for c in args.configs.split(","))
            for malloc in mallocs
        ]
    rows, out = [], args.out or RESULTS / f"{slug(name)}.csv"
    peak = matmul_gflops() if args.flop_rate else None
    if peak:
        print(
            f"float32 matrix product (2048²): {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads",
            flush=True,
        )
    for (model, routing), batch, mode, phase, malloc in grid:
        config = dict(
            model_name=model,
            routing=routing,
            batch=batch,
            mode=mode,
            phase=phase,
            device=args.device,
            recompute=args.recompute
            if routing in ("fused", "triton")
            else "-",  # "cpu" keeps its inputs only
        )
        left = args.timeout if args.deadline is None else min(args.timeout, args.deadline - time.time())
        if left < EXPECTED_SECONDS[mode]:
            print(f"skipped (deadline) <- {model} routing={routing} batch {batch} {mode} {phase}", flush=True)
            continue
        timed_config = {
            **config,
            "warmup": args.warmup,
            "steps": args.steps,
            "check": args.check,
            "tf32": args.tf32,
            "amp": args.amp,
        }
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            parts = (model, routing, config["recompute"], batch, mode, phase, args.tf32, args.amp)
            name = slug(" ".join(map(str, parts)))
            timed_config["profile"] = str(args.profile / f"profile-{name}.txt")
        if args.in_process:
            result = run_here(timed_config, left)
        else:
            result = run_isolated(timed_config, malloc, left)
        row = {
            **config,
            "threads": torch.get_num_threads(),
            "malloc": malloc,
            "tf32": args.tf32,
            "amp": args.amp,
            **result,
            **meta,
            "load_average": os.getloadavg()[0],  # other processes on the machine while this row ran
        }
        row["model"], row["batch_size"] = row.pop("model_name"), row.pop("batch")
        if peak and "images_per_s" in result:
            per_image = model_info(model)["flops_per_image"] * (3 if phase == "train" else 1)
            row["gflop_per_s"] = result["images_per_s"] * per_image / 1e9
            row["of_matmul_rate"] = row["gflop_per_s"] / peak
        print(
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
            f"<- {model} routing={routing} batch {batch} {mode} {phase} malloc={malloc}",
            flush=True,
        )
        rows.append(row)
        write(pd.DataFrame([row]), out, show=False)  # kept even if the run is cut off later
    if rows:
        write(pd.DataFrame(rows), out)


def write(table: pd.DataFrame, path: Path, show: bool = True) -> None:
    """Merge into `path`: a new row replaces the old one of the same configuration."""
    if path.exists():
        old = pd.read_csv(path)
        if "routing" not in old:  # rows from before --routing measured the plain path (cnn: no routing)
            old["routing"] = old["model"].map(lambda m: "plain" if m.startswith("capsnet") else "-")
        if "tf32" not in old:  # rows from before --tf32 ran with torch's defaults
            old["tf32"] = "default"
        if "amp" not in old:  # rows from before --amp: float32 throughout
            old["amp"] = "none"
        if "recompute" not in old:  # rows from before --recompute: fused recomputed every layer
            old["recompute"] = old["routing"].map(lambda r: "all" if r == "fused" else "-")
        table = pd.concat([old, table]).drop_duplicates(KEY, keep="last")
    table = table[KEY + [c for c in table if c not in KEY]].sort_values(KEY).reset_index(drop=True)
    atomic_write_text(path, table.to_csv(index=False))
    if not show:
        return
    columns = [c for c in KEY + ["images_per_s", "peak_memory_mb", "of_matmul_rate", "error"] if c in table]
    print(table[columns].to_string(index=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

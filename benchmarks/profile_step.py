"""Where one capsnet training step spends its time on this machine: forward, backward and the optimiser
timed apart (wall and process CPU seconds: the second is less disturbed by other processes on a shared
machine), then torch.profiler's operators, each inductor-generated kernel a row, by self CPU time.

    OMP_NUM_THREADS=2 python benchmarks/profile_step.py --model capsnet-small --routing fused --batch 64 \
        --set iterations=2 --set estep_temperature=0.25
"""

from __future__ import annotations

import argparse
import time

import torch

from robustcaps.models import create_model
from robustcaps.models.common import compile_model


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="capsnet-small")
    parser.add_argument("--routing", default="fused")
    parser.add_argument("--recompute", default="none")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eager", action="store_true", help="no torch.compile")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE model config override")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch._inductor.config.cpp.enable_kernel_profile = True  # each generated C++ kernel a profiler row
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    torch.manual_seed(0)
    model = create_model(args.model, routing=args.routing, **overrides)
    if args.routing != "plain":
        model.use_recompute(args.recompute)
    run = model if args.eager else compile_model(model, "default")
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.rand(args.batch, 1, 32, 32), torch.randint(0, 5, (args.batch,))
    parts = {key: [0.0, 0.0] for key in ("forward", "backward", "optimiser")}

    def step(timing: bool) -> None:
        marks = [(time.perf_counter(), time.process_time())]
        optimiser.zero_grad(set_to_none=True)
        with torch.profiler.record_function("forward"):
            loss = torch.nn.functional.cross_entropy(run(x), y)
        marks.append((time.perf_counter(), time.process_time()))
        with torch.profiler.record_function("backward"):
            loss.backward()
        marks.append((time.perf_counter(), time.process_time()))
        with torch.profiler.record_function("optimiser"):
            optimiser.step()
        marks.append((time.perf_counter(), time.process_time()))
        if timing:
            for key, a, b in zip(parts, marks, marks[1:], strict=False):
                parts[key] = [p + (y - x) / args.steps for p, x, y in zip(parts[key], a, b, strict=True)]

    for _ in range(3):
        step(False)
    for _ in range(args.steps):
        step(True)
    wall, cpu = (sum(p[k] for p in parts.values()) for k in (0, 1))
    print(
        f"{args.model} routing={args.routing} batch {args.batch} {overrides}: {args.batch / wall:.1f} img/s"
    )
    for key, (seconds, cpu_seconds) in parts.items():
        print(
            f"  {key:10s} {1000 * seconds:8.1f} ms wall {100 * seconds / wall:5.1f} %, "
            f"CPU {100 * cpu_seconds / cpu:5.1f} %"
        )
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(3):
            step(False)
    print(
        profiler.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70
        )
    )


if __name__ == "__main__":
    main()

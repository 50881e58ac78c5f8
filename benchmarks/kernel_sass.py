"""What the Triton routing kernels compile to on an H100, and the least time their instructions need.

    python benchmarks/kernel_sass.py                  # table of every kernel variant, then the estimate
    python benchmarks/kernel_sass.py --batch 64 --iterations 3 --csv benchmarks/results/triton-sm90-sass.csv

Needs no GPU: Triton compiles each variant that routing_kernels launches to sm_90 machine code with its
bundled ptxas, and its bundled nvdisasm and cuobjdump show the code. For each variant: registers, spills
(local memory), shared memory, and the instructions of its inner loop by kind (an inner loop is the code
between a label and the branch back to it). Shuffles (SHFL), barriers (BAR) and shared-memory traffic
(LDS/STS/STSM) in a loop are threads exchanging data, which the kernels' design avoids.

The estimate: every launch of a `capsnet` (A=B=C=D=32) training step at this batch (each routed layer
recomputed in backward as capsnet trains, unless --recompute none), its loop iterations times the loop's
instructions plus each program's instructions outside the loop, issued at one warp instruction per
cycle by each of the 4 schedulers of 132 SMs at 1.98 GHz (an H100 SXM at full clock). That is a floor (no
memory stalls, full occupancy, no other work), not a prediction: the GPU benchmark measures
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

os.environ.pop("TRITON_INTERPRET", None)  # compile for real (read when triton is first imported)

import triton  # noqa: E402
from triton.backends import nvidia  # noqa: E402

from robustcaps.io import atomic_write_text  # noqa: E402
from robustcaps.models import routing_kernels as kernels  # noqa: E402
from robustcaps.models.routing_triton import weight_gradient_chunks  # noqa: E402
from robustcaps.provenance import git_commit  # noqa: E402

TOOLS = Path(nvidia.__file__).parent / "bin"
WARP_ISSUE_PER_SECOND = 132 * 4 * 1.98e9
KINDS = {
    "fp32": ("FFMA", "FMUL", "FADD"),
    "load": ("LDG",),
    "store": ("STG",),
    "shuffle": ("SHFL",),
    "barrier": ("BAR",),
    "shared": ("LDS", "STS", "STSM"),
}
# capsnet (A=B=C=D=32) at batch 1: its routed layers as (rows per image, children I, parents J, offsets)
LAYERS = {
    "ConvCaps1": (36, 288, 32, False),
    "ConvCaps2": (16, 288, 32, False),
    "ClassCaps": (1, 512, 5, True),
}


def disassemble(compiled) -> tuple[list[str], dict]:
    """The kernel's instructions (opcode and operands) and its resource use from cuobjdump."""
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = run_tool("nvdisasm", "-c", str(cubin))
        usage = run_tool("cuobjdump", "-res-usage", str(cubin))
    resources = {key.lower(): int(value) for key, value in re.findall(r"(REG|LOCAL|SHARED):(\d+)", usage)}
    return sass.splitlines(), resources


def run_tool(name: str, *args: str) -> str:
    return subprocess.run([str(TOOLS / name), *args], capture_output=True, text=True, check=True).stdout


def inner_loop(lines: list[str]) -> tuple[list[str], int]:
    """The opcodes of the longest loop (label … branch back to it) and the count of all the others."""
    opcodes, labels, longest = [], {}, (0, 0)
    for line in lines:
        if label := re.match(r"^\s*(\.L_x_\d+):", line):
            labels[label.group(1)] = len(opcodes)
        elif instruction := re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);", line):
            opcodes.append(instruction.group(1).split(".")[0])
            target = re.search(r"`\((\.L_x_\d+)\)", instruction.group(2))
            start = labels.get(target.group(1)) if target else None
            if start is not None and len(opcodes) - start > longest[1] - longest[0]:
                longest = (start, len(opcodes))
    loop = opcodes[longest[0] : longest[1]]
    return loop, len(opcodes) - len(loop)


def describe() -> pd.DataFrame:
    rows = []
    for (kernel, flags), compiled in zip(kernels.variants(), kernels.compile_for(90), strict=True):
        lines, resources = disassemble(compiled)
        loop, outside = inner_loop(lines)
        counts = collections.Counter(loop)
        row = {
            "kernel": kernel.fn.__name__.strip("_").removesuffix("_kernel"),
            **{k.lower(): v for k, v in flags.items()},
        }
        row |= {
            "registers": resources.get("reg"),
            "spill_bytes": resources.get("local"),
            "shared_bytes": resources.get("shared"),
        }
        row |= {"loop_instructions": len(loop), "other_instructions": outside}
        row |= {kind: sum(counts[op] for op in ops) for kind, ops in KINDS.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def launches(batch: int, iterations: int, recompute: bool = True) -> list[tuple]:
    """(layer, kernel, flags, programs, loop iterations in all) of one training step."""
    out = []
    for layer, (positions, children, parents, offsets) in LAYERS.items():
        rows, warps = batch * positions, kernels.WARPS
        row_blocks, child_tiles = triton.cdiv(rows, warps), triton.cdiv(children, kernels.LANES)
        parts = kernels.split_loop(children, row_blocks)[0]
        chunks = kernels.chunked(rows, weight_gradient_chunks(children))[0]
        sums = {  # programs, and the loop iterations of all their warps
            "moments": (row_blocks * parts, row_blocks * warps * children),
            "quadratic": (row_blocks * parts, row_blocks * warps * children),
            "grad_poses": (row_blocks * child_tiles, row_blocks * child_tiles * warps * parents),
            "grad_weight": (
                triton.cdiv(children, warps) * chunks,
                triton.cdiv(children, warps) * warps * rows,
            ),
        }
        plan = [  # (kernel, launches, flags): the forward and its recompute, then backward
            ("moments", (1 + recompute) * iterations, dict(has_mean=False)),
            ("quadratic", (1 + recompute) * (iterations - 1), dict(has_mean=True, has_linear=False)),
            ("quadratic", iterations, dict(has_mean=False, has_linear=True)),  # the M-steps' backward
            ("moments", iterations - 1, dict(has_mean=True)),  # the E-steps' backward
            ("grad_poses", 2 * iterations - 1, {}),
            ("grad_weight", 2 * iterations - 1, {}),
        ]
        for kernel, count, flags in plan:
            out += [(layer, kernel, dict(has_offsets=offsets, **flags), *sums[kernel])] * count
    return out


def estimate(table: pd.DataFrame, batch: int, iterations: int, recompute: bool = True) -> pd.DataFrame:
    rows = []
    for layer, kernel, flags, programs, trips in launches(batch, iterations, recompute):
        match = table[table.kernel == kernel]
        for key, value in flags.items():
            match = match[match[key] == value]
        variant = match.iloc[0]
        instructions = (
            trips * variant.loop_instructions + programs * kernels.WARPS * variant.other_instructions
        )
        rows.append({"layer": layer, "kernel": kernel, "launches": 1, "warp_instructions": instructions})
    steps = pd.DataFrame(rows).groupby(["layer", "kernel"], sort=False).sum().reset_index()
    steps["floor_ms"] = steps.warp_instructions / WARP_ISSUE_PER_SECOND * 1e3
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--recompute", choices=("all", "none"), default="all", help="as bench_models.py")
    parser.add_argument("--csv", type=Path, help="also write the per-variant table here")
    args = parser.parse_args()
    table = describe()
    print(f"Triton {triton.__version__}, sm_90, {kernels.WARPS} warps per program\n")
    print(table.to_string(index=False))
    steps = estimate(table, args.batch, args.iterations, args.recompute == "all")
    setting = f"batch {args.batch}, {args.iterations} iterations, recompute {args.recompute}"
    print(f"\ncapsnet training step, {setting}:\n")
    print(steps.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    total = steps.floor_ms.sum()
    print(f"\nissue floor of the kernels: {total:.2f} ms per step ({args.batch / total * 1e3:,.0f} img/s)")
    if args.csv:  # which compiler made this code, for what, from which commit
        table = table.assign(triton=triton.__version__, target="sm_90", commit=git_commit())
        atomic_write_text(args.csv, table.to_csv(index=False))


if __name__ == "__main__":
    main()

"""Bytes that torch.compile's kernels move in one capsnet training step, by inductor's own count.

    python benchmarks/inductor_bytes.py                                   # fused and triton, batch 64
    python benchmarks/inductor_bytes.py --routing fused --recompute all,first,none --batch 64

A memory-bound step takes at least its bytes over the memory bandwidth, so this count, made on the CPU, is
a GPU floor where no GPU is at hand: inductor sums, for every kernel it generates (and every operator it
calls), the sizes of the buffers that it reads and writes (`graph.count_bytes`, logged with
TORCH_LOGS=inductor_metrics), forward graph and backward graph (which includes the recompute of a
checkpointed layer). Caveat: this is the CPU code generator's fusion, which can differ from the GPU's.

routing="triton" cannot run on the CPU outside Triton's interpreter, whose kernels are far too slow for a
full-size step; here its three kernels are replaced by torch sums inside the same custom operators, which
torch.compile treats as opaque either way, so the count is what the step moves besides the votes: the torch
part and the kernels' responsibility-sized inputs and outputs, not the kernels' reads of M and W.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # a cached graph is not generated again, nor counted

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch._inductor.metrics as metrics  # noqa: E402

from robustcaps.models import create_model, routing_triton  # noqa: E402
from robustcaps.models import routing_kernels as kernels  # noqa: E402
from robustcaps.models.common import FUSED_ROUTING_INDUCTOR, compile_model  # noqa: E402
from robustcaps.runs import atomic_write_text, device_description, git_commit  # noqa: E402

INDUCTOR_ROUTINGS = ("fused", "gathered")  # whose vote-sized sums inductor generates
NO_SIMD = {"cpp.simdlen": 0}


def votes(poses, weight, offsets):
    """V (NL, J, I, 4, 4) in torch, from the kernels' layouts."""
    v = torch.einsum("nirk,ijkc->njirc", poses.unflatten(-1, (4, 4)), weight.unflatten(-1, (4, 4)))
    return v if offsets is None else v + offsets.unflatten(-1, (4, 4))  # offsets (I, 16)


def moments(c, poses, weight, offsets, mean=None):
    v = votes(poses, weight, offsets).flatten(-2) - (0 if mean is None else mean.unsqueeze(2))
    return (c.unsqueeze(-1) * v).sum(2), (c.unsqueeze(-1) * v.square()).sum(2)


def quadratic(poses, weight, offsets, a, mean=None, b=None):
    v = votes(poses, weight, offsets).flatten(-2)
    q = (a.unsqueeze(2) * (v - (0 if mean is None else mean.unsqueeze(2))).square()).sum(-1)
    q = q if b is None else q + (b.unsqueeze(2) * v).sum(-1)
    return kernels.quadratic_layout(a.new_empty, *q.shape).copy_(q)


def vote_gradients(c, u, w, poses, weight, offsets, chunks):
    v = votes(poses, weight, offsets).flatten(-2)
    g = (c.unsqueeze(-1) * (u.unsqueeze(2) + w.unsqueeze(2) * v)).unflatten(-1, (4, 4))  # gV (NL, J, I, 4, 4)
    g_poses = torch.einsum("njirc,ijkc->nirk", g, weight.unflatten(-1, (4, 4)))
    g_weight = torch.einsum("nirk,njirc->ijkc", poses.unflatten(-1, (4, 4)), g)
    return g_poses.flatten(-2).contiguous(), g_weight.flatten(-2).contiguous()  # the fake kernels' strides


def stand_in_kernels() -> None:
    kernels.moments, kernels.quadratic, kernels.vote_gradients = moments, quadratic, vote_gradients
    routing_triton.require_triton = lambda device: None


class GraphBytes(logging.Handler):
    """Collects num_bytes_accessed from inductor's per-graph metrics log records."""

    def __init__(self) -> None:
        super().__init__()
        self.graphs: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if found := re.search(r"'num_bytes_accessed': (\d+)", record.getMessage()):
            self.graphs.append(int(found.group(1)))


def count(
    routing: str, recompute: str, batch: int, iterations: int, thresholds: str = "default", simd: bool = True
) -> dict:
    """`thresholds`: "default" compiles as training does, "raised" with FUSED_ROUTING_INDUCTOR. `simd`
    False: the CPU kernels without vector instructions (the count is the scheduler's, made before code
    generation, and does not change; torch 2.11's vectorised kernels for the raised thresholds corrupt the
    heap and abort the step, 2.14's do not)."""
    torch.manual_seed(0)
    model = create_model("capsnet", routing=routing, iterations=iterations)
    model.use_recompute(recompute)
    options = {**(FUSED_ROUTING_INDUCTOR if thresholds == "raised" else {}), **({} if simd else NO_SIMD)}
    net = compile_model(model, inductor=options)
    step = lambda x, y: torch.nn.functional.cross_entropy(net(x), y)  # noqa: E731
    x, y = torch.rand(batch, 1, 32, 32), torch.randint(0, 5, (batch,))
    handler = GraphBytes()
    logger = logging.getLogger("torch._inductor.compile_fx")
    logger.addHandler(handler)
    metrics.reset()
    start = time.perf_counter()
    try:
        step(x, y).backward()
    finally:
        logger.removeHandler(handler)
    forward, backward = handler.graphs
    return {
        "routing": routing, "recompute": recompute,
        "thresholds": thresholds if routing in INDUCTOR_ROUTINGS else "-",
        "batch_size": batch, "iterations": iterations,
        "forward_gb": forward / 1e9, "backward_gb": backward / 1e9, "step_gb": (forward + backward) / 1e9,
        "kernels": metrics.generated_kernel_count, "compile_s": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routing", default="fused,gathered,triton")
    parser.add_argument("--recompute", default="all")
    parser.add_argument(
        "--thresholds", default="default,raised", help="inductor's realize thresholds for fused routing: "
        "torch's defaults (as training compiles) and/or models.common.FUSED_ROUTING_INDUCTOR",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument(
        "--no-simd",
        action="store_true",
        help="CPU kernels without vector instructions "
        "(same count; torch 2.11's vectorised kernels abort with the raised thresholds)",
    )
    args = parser.parse_args()
    torch._logging.set_logs(inductor_metrics=True)
    stand_in_kernels()
    settings = [
        (routing, recompute, thresholds)
        for routing in args.routing.split(",")
        for recompute in args.recompute.split(",")
        for thresholds in (args.thresholds.split(",") if routing in INDUCTOR_ROUTINGS else ["default"])
    ]
    rows = [
        count(routing, recompute, args.batch, args.iterations, thresholds, simd=not args.no_simd)
        for routing, recompute, thresholds in settings
    ]
    table = pd.DataFrame(rows).assign(
        device=device_description(torch.device("cpu")), torch=torch.__version__, commit=git_commit()
    )
    print(
        table.drop(columns=["device", "torch", "commit"]).to_string(
            index=False, float_format=lambda v: f"{v:.2f}"
        )
    )
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False))


if __name__ == "__main__":
    main()

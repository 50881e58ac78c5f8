"""Bytes that torch.compile's kernels move in one capsnet training step, by inductor's own count.

    python benchmarks/inductor_bytes.py                                   # fused and triton, batch 64
    python benchmarks/inductor_bytes.py --routing fused --recompute all,first,none --batch 64
    python benchmarks/inductor_bytes.py --routing gathered,fused --codegen cuda   # the GPU's fusion

A memory-bound step takes at least its bytes over the memory bandwidth, so this count, made on the CPU, is
a GPU floor where no GPU is at hand: inductor sums, for every kernel it generates (and every operator it
calls), the sizes of the buffers that it reads and writes (`graph.count_bytes`, logged with
TORCH_LOGS=inductor_metrics), forward graph and backward graph (which includes the recompute of a
checkpointed layer). Caveat: this is the CPU code generator's fusion, which can differ from the GPU's.

`--codegen cuda` counts what inductor's GPU code generator would schedule, on this CPU machine: the
step's forward and backward graphs are captured as torch.compile hands them to inductor (AOT autograd, the
min-cut partitioner, inductor's decompositions), then lowered and fused for a simulated CUDA device (an
H100's properties; fake tensors, so nothing runs and no kernel is compiled). Inductor counts its bytes
from the fused scheduler nodes, before code generation, so this is the GPU's count up to what the device
properties steer. Check of the method: lowered for the CPU the same way, the captured graphs give
inductor's own CPU count to the byte (gathered, recompute all, torch 2.11: 14.03 + 27.05 GB).

routing="triton" cannot run on the CPU outside Triton's interpreter, whose kernels are far too slow for a
full-size step; here its three kernels are replaced by torch sums inside the same custom operators, which
torch.compile treats as opaque either way, so the count is what the step moves besides the votes: the torch
part and the kernels' responsibility-sized inputs and outputs, not the kernels' reads of M and W.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import time
import types
from pathlib import Path
from unittest import mock

os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # a cached graph is not generated again, nor counted

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch._inductor.metrics as metrics  # noqa: E402

from robustcaps.models import create_model, routing_triton  # noqa: E402
from robustcaps.models import routing_kernels as kernels  # noqa: E402
from robustcaps.models.common import COMPILE_SETTINGS, compile_as  # noqa: E402
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
    model, x, y = capsnet_step(routing, recompute, batch, iterations)
    net = compile_as(model, thresholds, {} if simd else NO_SIMD)
    step = lambda x, y: torch.nn.functional.cross_entropy(net(x), y)  # noqa: E731
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
    kernels = metrics.generated_kernel_count
    return row(routing, recompute, thresholds, batch, iterations, forward, backward, start, kernels)


def capsnet_step(routing: str, recompute: str, batch: int, iterations: int) -> tuple[torch.nn.Module, ...]:
    """The counted step's capsnet and batch (images, labels)."""
    torch.manual_seed(0)
    model = create_model("capsnet", routing=routing, iterations=iterations)
    model.use_recompute(recompute)
    return model, torch.rand(batch, 1, 32, 32), torch.randint(0, 5, (batch,))


def row(
    routing: str,
    recompute: str,
    thresholds: str,
    batch: int,
    iterations: int,
    forward: int,
    backward: int,
    start: float,
    kernels: int | None = None,
) -> dict:
    """One table row from a step's forward and backward bytes; `start`: when its compile began."""
    return {
        "routing": routing, "recompute": recompute,
        "thresholds": thresholds if routing in INDUCTOR_ROUTINGS else "-",
        "batch_size": batch, "iterations": iterations,
        "forward_gb": forward / 1e9, "backward_gb": backward / 1e9, "step_gb": (forward + backward) / 1e9,
        "kernels": kernels, "compile_s": time.perf_counter() - start,
    }  # fmt: skip


H100 = types.SimpleNamespace(  # what inductor's GPU heuristics read of a device (torch.cuda's properties)
    name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=80 * 2**30,
    max_threads_per_multi_processor=2048, max_threads_per_block=1024, regs_per_multiprocessor=65536,
    warp_size=32, shared_memory_per_block_optin=232448, L2_cache_size=50 * 2**20, gcnArchName="",
)  # fmt: skip


@contextlib.contextmanager
def simulated_gpu():
    """torch and inductor see one CUDA device with the H100's properties (for lowering and scheduling with
    fake tensors only: nothing may run on it)."""
    import torch._inductor.scheduler as scheduler
    import torch._subclasses.fake_tensor as fake_tensor
    from torch._dynamo.device_interface import CudaInterface

    values = {
        "get_device_properties": lambda *a, **k: H100, "get_device_capability": lambda *a, **k: (9, 0),
        "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        for name, value in values.items():
            stack.enter_context(mock.patch.object(torch.cuda, name, value))
            stack.enter_context(mock.patch.object(CudaInterface, name, staticmethod(value), create=True))
        stack.enter_context(
            mock.patch.object(CudaInterface, "get_compute_capability", staticmethod(lambda *a: 90))
        )
        stack.enter_context(
            mock.patch.object(CudaInterface.Worker, "get_device_properties", staticmethod(lambda *a: H100))
        )
        stack.enter_context(mock.patch.object(fake_tensor, "init_gpu_context", lambda device: None))
        # Triton is installed but finds no GPU; the scheduler asks for it only to pick its GPU backend
        stack.enter_context(mock.patch.object(scheduler, "has_triton", lambda: True))
        yield


def scheduled_bytes(
    gm: torch.fx.GraphModule, inputs: list, device: str, options: dict, backward: bool
) -> int:
    """Inductor's byte count for one captured graph, lowered and fused for `device` ("cpu" or "cuda")."""
    from torch._inductor import config
    from torch._inductor.debug import DebugContext
    from torch._inductor.graph import GraphLowering
    from torch._inductor.virtualized import V
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        inputs = [
            torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
            if isinstance(t, torch.Tensor) else t
            for t in inputs
        ]  # fmt: skip
    gm = torch.fx.GraphModule(gm, gm.graph.__deepcopy__())
    for node in gm.graph.nodes:  # tensors the graph creates (zeros, ranges) on the same device
        if node.kwargs.get("device") is not None:
            node.kwargs = {**node.kwargs, "device": torch.device(device)}
    gm.recompile()
    with config.patch(options), V.set_fake_mode(fake), DebugContext():
        graph = GraphLowering(gm, example_inputs=inputs, is_inference=False, is_backward=backward)
        with V.set_graph_handler(graph):
            graph.run(*inputs)
            graph.init_wrapper_code()
            graph._update_scheduler()  # as GraphLowering.codegen does, which then generates the kernels
            return graph.count_bytes()[0]


def count_scheduled(
    routing: str,
    recompute: str,
    batch: int,
    iterations: int,
    thresholds: str = "default",
    device: str = "cuda",
) -> dict:
    """`count`'s row, from the captured graphs lowered for `device` (see the module docstring)."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    graphs: list[tuple[bool, torch.fx.GraphModule, list]] = []

    def capturer(backward: bool):
        return lambda gm, inputs: graphs.append((backward, gm, inputs)) or gm.forward

    def backend(gm, inputs):
        return aot_module_simplified(
            gm, inputs, fw_compiler=capturer(False), bw_compiler=capturer(True),
            partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table(),
        )  # fmt: skip

    model, x, y = capsnet_step(routing, recompute, batch, iterations)
    start = time.perf_counter()
    torch.nn.functional.cross_entropy(torch.compile(model, backend=backend)(x), y).backward()
    options = COMPILE_SETTINGS[thresholds][1]
    with simulated_gpu() if device == "cuda" else contextlib.nullcontext():
        counted = [
            (backward, scheduled_bytes(gm, inputs, device, options, backward))
            for backward, gm, inputs in graphs
        ]
    forward = sum(b for backward, b in counted if not backward)
    backward = sum(b for backward, b in counted if backward)
    return row(routing, recompute, thresholds, batch, iterations, forward, backward, start)


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
        "--codegen", choices=["cpu", "cuda"], default="cpu",
        help="cpu: compile and run a step on this CPU, inductor's count as it logs it; cuda: the graphs "
        "lowered and fused for a simulated H100 (fused and gathered routing; nothing runs on it)",
    )  # fmt: skip
    parser.add_argument(
        "--no-simd",
        action="store_true",
        help="CPU kernels without vector instructions "
        "(same count; torch 2.11's vectorised kernels abort with the raised thresholds)",
    )
    args = parser.parse_args()
    if args.codegen == "cuda" and not set(args.routing.split(",")) <= set(INDUCTOR_ROUTINGS):
        parser.error(f"--codegen cuda: --routing must be among {', '.join(INDUCTOR_ROUTINGS)}")
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
        if args.codegen == "cpu"
        else count_scheduled(routing, recompute, args.batch, args.iterations, thresholds)
        for routing, recompute, thresholds in settings
    ]
    table = pd.DataFrame(rows).assign(
        codegen="cpu" if args.codegen == "cpu" else f"cuda (simulated {H100.name})",
        device=device_description(torch.device("cpu")), torch=torch.__version__, commit=git_commit(),
    )  # fmt: skip
    print(
        table.drop(columns=["codegen", "device", "torch", "commit"]).to_string(
            index=False, float_format=lambda v: f"{v:.2f}"
        )
    )
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False))


if __name__ == "__main__":
    main()

"""The training loop behind `train.fit`: one Session holds the model, optimiser, data and progress.

Resuming is bit-identical on the same device because everything random is saved with each checkpoint:
the global torch/CUDA/numpy/Python RNG states (per rank), the augmentation generator, the data-order
generator's state at the start of the epoch (so the epoch's permutation is drawn again) and the position
within the epoch. The training loss is summed on the device and read back every LOG_EVERY steps and
before every checkpoint, so a NaN/Inf never reaches a checkpoint: the last good one stays in place.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from robustcaps.data import transforms
from robustcaps.data.splits import stratified_subset
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_torch_save, atomic_write_text
from robustcaps.models import CapsNet, routing_as
from robustcaps.models.common import compile_model, full_float32_convolutions
from robustcaps.training import checkpoints, distributed, losses
from robustcaps.training.config import (
    TrainConfig,
    build_model,
    config_json,
    fields_where,
    load_split,
    lr_factor,
    resolve_speed,
)
from robustcaps.training.evaluation import evaluate

LOG_EVERY = 10  # steps between reading the loss back from the device (a sync) and refreshing the bar


@dataclass
class Progress:
    """Where training stands; saved whole in every checkpoint. Sums are over all ranks."""

    order_epoch_start: torch.Tensor  # data-order generator state before this epoch's permutation
    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0
    loss_sum: float = 0.0
    wrong: int = 0
    seen: int = 0
    train_seconds: float = 0.0  # this epoch, for img/s
    seconds: float = 0.0  # the whole run, training and validation
    best_val_error: float = math.inf
    best_familiar_error: float = math.inf  # lowest so far, with familiar_snapshots
    stale_validations: int = 0  # validations since the best val error last fell (for `patience`)
    stop_reason: str = ""  # "", "steps", "target" or "plateau"
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Session:
    config: TrainConfig
    run_dir: Path
    world: distributed.World
    device: torch.device
    data: Any  # robustcaps.data.splits.SplitData
    images: torch.Tensor  # training images on the device: (N, C, 48, 48) uint8
    labels: torch.Tensor
    model: torch.nn.Module  # what checkpoints hold and validation runs
    net: torch.nn.Module  # what trains: the model, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augment: torch.Generator
    progress: Progress
    loss_name: str
    pending: torch.Tensor = None  # on the device since the last sync: (loss·n, wrong, n), float64
    next_order_state: torch.Tensor | None = None
    clock: float = 0.0  # when the time not yet added to progress began
    saved_step: int | None = None  # step of the newest last.pt
    bar: Any = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.config.batch_size

    @property
    def total_steps(self) -> int:
        return _total_steps(self.config, self.data)

    @classmethod
    def open(cls, config: TrainConfig, run_dir: Path, resume: bool, world, device) -> Session:
        resume = _check_run_dir(config, run_dir, resume, world)
        distributed.barrier(world)  # every rank has looked at run_dir before rank 0 writes into it
        data = load_split(config)
        config = resolve_speed(config, torch.device(device).type, len(data.train))
        checkpoints.seed_everything(
            config.seed + world.rank
        )  # after the data: a first-time render may draw numbers
        if len(data.train) < config.batch_size:
            raise RobustcapsError(
                f"--batch-size {config.batch_size} exceeds the {len(data.train)} training images"
            )
        for option, used in (
            ("--target-familiar-error", config.target_familiar_error is not None),
            ("--familiar-snapshots", config.familiar_snapshots),
        ):
            if used and len(data.familiar) == 0:
                raise RobustcapsError(f"{option}: split {config.split!r} has no familiar images")
        model = build_model(config).to(device)
        if config.routing != "plain":
            if not isinstance(model, CapsNet):
                raise RobustcapsError(f"--routing {config.routing}: {config.model} has no EM routing")
            model.use_routing(config.routing)
        if getattr(model, "routing", None) == "triton":  # --routing or --model-option routing="triton"
            from robustcaps.models.routing_triton import require_triton  # use_routing checked triton

            try:
                require_triton(torch.device(device))
            except RuntimeError as error:
                raise RobustcapsError(f"--routing triton: {error}") from None
        if config.recompute != "all":
            if getattr(model, "routing", "plain") == "plain":  # a CNN, or capsules routed the plain way
                raise RobustcapsError(
                    f"--recompute {config.recompute}: only with fused or triton routing "
                    f"({config.model} routes plainly here)"
                )
            model.use_recompute(config.recompute)
        if losses.resolve_loss(config.loss, model.family) == "margin" and model.family != "dynamic":
            raise RobustcapsError(f"--loss margin: needs capsule lengths; {config.model} is a {model.family}")
        if config.calibrate_images and isinstance(model, CapsNet):
            model.calibrate_half_active(probe=_calibration_probe(data.train, config))
        net = compile_model(model, config.compile_mode) if config.compile else model
        net = distributed.wrap(net, world, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        lr_at = lr_factor(config, _total_steps(config, data))
        session = cls(
            config,
            run_dir,
            world,
            device,
            data,
            images=data.train.images.to(device),
            labels=data.train.labels.to(device),
            model=model,
            net=net,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at),
            augment=torch.Generator(device=device).manual_seed(config.seed + 1),
            progress=Progress(torch.Generator().manual_seed(config.seed).get_state()),
            loss_name=losses.resolve_loss(config.loss, model.family),
        )
        session.pending = torch.zeros(3, dtype=torch.float64, device=device)
        last = checkpoints.checkpoint_path(run_dir, "last")
        for leftover in last.parent.glob(".*.tmp") if resume and world.is_main else ():
            leftover.unlink()  # a write cut short by the kill this run is resuming from
        if resume and last.is_file():
            session.restore(checkpoints.load_checkpoint(last, device))
        if world.is_main:
            _write_run_files(session, resume)
        return session

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.augment.set_state(state["augment"].cpu())
        self.progress = Progress(**state["progress"])
        self.saved_step = self.progress.step
        self.progress.order_epoch_start = self.progress.order_epoch_start.cpu()
        rng = state["rng"]
        if len(rng) != self.world.world_size:
            tqdm.write(f"resuming {len(rng)}-process training on {self.world.world_size}: not bit-identical")
        checkpoints.restore_rng_state(rng[self.world.rank % len(rng)])
        if self.progress.stop_reason == "steps" and self.progress.step < self.total_steps:
            self.progress.stop_reason = ""  # --steps/--epochs was raised: train on
        patience = self.config.patience
        if self.progress.stop_reason == "plateau" and not 0 < patience <= self.progress.stale_validations:
            self.progress.stop_reason = ""  # --patience was raised or dropped: train on

    def checkpoint(self, best: bool) -> None:
        """checkpoints/last.pt (and best.pt), then metrics.csv; each written atomically by rank 0."""
        rng = distributed.all_gather(checkpoints.capture_rng_state(), self.world)
        if not self.world.is_main:
            return
        state = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "augment": self.augment.get_state(),
            "rng": rng,
            "world_size": self.world.world_size,
            "step": self.progress.step,
            "stop_reason": self.progress.stop_reason,
            "progress": dataclasses.asdict(self.progress),
        }
        if best:  # best before last: a kill between the two redoes this epoch and rewrites best identically
            atomic_torch_save(checkpoints.checkpoint_path(self.run_dir, "best"), state)
        atomic_torch_save(checkpoints.checkpoint_path(self.run_dir, "last"), state)
        checkpoints.write_metrics(self.run_dir, self.progress.history)
        self.saved_step = self.progress.step


def _total_steps(config: TrainConfig, data: Any) -> int:
    return config.steps or config.epochs * (len(data.train) // config.batch_size)


def _calibration_probe(train: Any, config: TrainConfig) -> torch.Tensor:
    """Centre crops of `calibrate_images` training images, a seeded class-stratified draw, in [0, 1]."""
    generator = torch.Generator().manual_seed(config.seed)
    index = stratified_subset(train.labels, config.calibrate_images, generator)
    return transforms.test_batch(train.images[index])


def _check_run_dir(config: TrainConfig, run_dir: Path, resume: bool, world: distributed.World) -> bool:
    """Whether to resume: a run killed before it wrote config.json has nothing to resume and starts anew."""
    has_run = (run_dir / checkpoints.CONFIG_FILE).exists()
    if not resume and has_run:
        raise RobustcapsError(f"--out {run_dir}: already holds a run; pass --resume or choose another --out")
    if resume and not has_run:
        if world.is_main:
            tqdm.write(
                f"--resume: no {checkpoints.CONFIG_FILE} in {run_dir} yet; starting the run from the start"
            )
        return False
    if resume:
        check_resumable(config, run_dir)
    return resume


def check_resumable(config: TrainConfig, run_dir: Path) -> None:
    """A resumed run must be the run that was started: only the resumable settings may differ."""
    stored = TrainConfig.from_json(run_dir / checkpoints.CONFIG_FILE)
    changed = [k for k, v in config.to_dict().items() if stored.to_dict()[k] != v]
    changed = sorted(set(changed) - fields_where("resumable"))
    if changed:
        raise RobustcapsError(
            f"{run_dir / checkpoints.CONFIG_FILE}: --resume cannot change {', '.join(changed)}; "
            "drop those options or train into a new --out"
        )


def _write_run_files(s: Session, resume: bool) -> None:
    atomic_write_text(s.run_dir / checkpoints.CONFIG_FILE, config_json(s.config))
    extra = {"world_size": s.world.world_size, "torch_threads": torch.get_num_threads()}
    checkpoints.write_metadata(
        s.run_dir, s.data.identity, s.device, s.progress.step if resume else None, extra
    )
    if s.progress.history:
        checkpoints.write_metrics(s.run_dir, s.progress.history)


def run_session(s: Session) -> None:
    p = s.progress
    s.bar = tqdm(
        total=s.total_steps,
        initial=p.step,
        disable=not s.world.is_main,
        unit="step",
        desc=f"{s.config.model} {s.config.split}",
        dynamic_ncols=True,
    )
    try:
        with full_float32_convolutions(s.model.family == "capsnet"):
            while not p.stop_reason and p.step < s.total_steps:
                s.clock = time.perf_counter()
                _train_epoch(s)
                _end_epoch(s)
    finally:
        s.bar.close()
    if s.world.is_main:
        best = "" if math.isinf(p.best_val_error) else f", best val error {p.best_val_error:.4f}"
        tqdm.write(f"{s.run_dir}: stopped at step {p.step} ({_reason(s)}){best}")


def _reason(s: Session) -> str:
    if s.progress.stop_reason == "target":
        return f"familiar error reached --target-familiar-error {s.config.target_familiar_error}"
    if s.progress.stop_reason == "plateau":
        return f"val error did not fall in {s.config.patience} validations (--patience)"
    return f"{s.total_steps} steps done"


def _train_epoch(s: Session) -> None:
    p, b = s.progress, s.config.batch_size
    order = torch.Generator().manual_seed(0)
    order.set_state(p.order_epoch_start)
    permutation = torch.randperm(len(s.labels), generator=order).to(s.device)
    s.next_order_state = order.get_state()
    local = distributed.local_slice(s.world, b)
    for batch in range(p.batch_in_epoch, s.steps_per_epoch):
        index = permutation[batch * b : (batch + 1) * b]
        # The whole global batch is augmented on every rank so each slice equals one process's.
        x = transforms.train_batch(s.images[index], s.augment)[local]
        y = s.labels[index][local]
        _step(s, x, y, losses.spread_margin(p.step, s.config.margin_step_scale))
        p.step, p.batch_in_epoch = p.step + 1, batch + 1
        if _familiar_check_due(s, batch + 1):
            _check_familiar(s)
        every = s.config.checkpoint_every
        checkpoint_now = every and p.step % every == 0 and batch + 1 < s.steps_per_epoch
        if p.step % LOG_EVERY == 0 or checkpoint_now:
            _sync(s)
        if checkpoint_now and p.step < s.total_steps:
            s.checkpoint(best=False)
        if p.step >= s.total_steps:
            break


def _step(s: Session, x: torch.Tensor, y: torch.Tensor, margin: float) -> None:
    if s.config.compile and s.config.compile_mode == "reduce-overhead":
        # a new step: CUDA graphs may now overwrite the previous step's outputs (all consumed by then)
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.config.amp == "bf16"):
        loss, output = losses.training_loss(s.net, x, y, s.loss_name, margin)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    s.scheduler.step()
    wrong = output.detach().argmax(dim=1).ne(y).sum()
    n = torch.full((), len(y), dtype=torch.float64, device=y.device)
    s.pending += torch.stack([loss.detach().double() * n, wrong.double(), n])


def _sync(s: Session) -> None:
    """Read the summed loss back (a device sync), stop on NaN/Inf, refresh the bar."""
    p = s.progress
    loss_sum, wrong, seen = distributed.all_sum(s.pending, s.world).tolist()
    s.pending.zero_()
    if not math.isfinite(loss_sum):
        last = checkpoints.checkpoint_path(s.run_dir, "last")
        kept = f"kept {last} (step {s.saved_step})" if s.saved_step is not None else "no checkpoint yet"
        raise RobustcapsError(
            f"training loss became {loss_sum} by step {p.step}; stopped, {kept}. Lower --lr"
        )
    now = time.perf_counter()
    p.loss_sum, p.wrong, p.seen = p.loss_sum + loss_sum, p.wrong + int(wrong), p.seen + int(seen)
    p.train_seconds, p.seconds, s.clock = p.train_seconds + now - s.clock, p.seconds + now - s.clock, now
    s.bar.update(p.step - s.bar.n)
    s.bar.set_postfix(
        loss=f"{p.loss_sum / max(p.seen, 1):.4f}",
        acc=f"{1 - p.wrong / max(p.seen, 1):.3f}",
        img_s=f"{p.seen / max(p.train_seconds, 1e-9):.0f}",
    )


def _end_epoch(s: Session) -> None:
    """Validate (held-out training data; familiar viewpoints only under the matched protocol), log, save.
    Between validations (`eval_every` > 1) the errors are NaN: no best.pt, target or snapshot there."""
    p, config = s.progress, s.config
    _sync(s)
    matched = config.target_familiar_error is not None
    validate = (p.epoch + 1) % config.eval_every == 0 or p.step >= s.total_steps  # p.epoch: epochs completed
    has_val = len(s.data.val) > 0
    val_error = _error(s, s.data.val) if validate and has_val else math.nan
    familiar = validate and (matched or config.familiar_snapshots)
    familiar_error = _error(s, s.data.familiar) if familiar else math.nan
    _add_elapsed(s)
    p.history.append(_metrics_row(s, val_error, familiar_error))
    # without validation data (--val none) the run's model is its latest: best.pt follows last.pt
    improved = distributed.broadcast_flag(val_error < p.best_val_error if has_val else validate, s.world)
    if improved and has_val:
        p.best_val_error = val_error
    if validate:
        p.stale_validations = 0 if improved else p.stale_validations + 1
    if distributed.broadcast_flag(matched and familiar_error <= config.target_familiar_error, s.world):
        p.stop_reason = "target"
    elif config.patience and p.stale_validations >= config.patience:
        p.stop_reason = "plateau"
    elif p.step >= s.total_steps:
        p.stop_reason = "steps"
    if p.batch_in_epoch == s.steps_per_epoch:
        p.epoch, p.batch_in_epoch, p.order_epoch_start = p.epoch + 1, 0, s.next_order_state
        p.loss_sum, p.wrong, p.seen, p.train_seconds = 0.0, 0, 0, 0.0
    _snapshot_if_lowest(s, familiar_error)
    s.checkpoint(best=improved)


def _familiar_check_due(s: Session, batches_done: int) -> bool:
    """Whether `familiar_checks_per_epoch` puts a check after this many batches of the epoch (the epoch's
    end has its own, in _end_epoch)."""
    checks = s.config.familiar_checks_per_epoch
    if not s.config.familiar_snapshots or checks <= 1 or batches_done >= s.steps_per_epoch:
        return False
    return batches_done % max(1, s.steps_per_epoch // checks) == 0


def _check_familiar(s: Session) -> None:
    """A familiar-error check inside an epoch: a metrics row (no validation, no training averages) and a
    snapshot at a new lowest familiar error. Evaluation only: the training that follows is unchanged."""
    p = s.progress
    _sync(s)
    familiar_error = _error(s, s.data.familiar)
    _add_elapsed(s)
    p.history.append(
        _metrics_row(s, math.nan, familiar_error)
        | {"train_loss": math.nan, "train_error": math.nan, "train_images": 0, "img_per_s": math.nan}
    )
    _snapshot_if_lowest(s, familiar_error)


def _add_elapsed(s: Session) -> None:
    """Count the time since the clock last moved (evaluation, outside training) into the run's seconds."""
    now = time.perf_counter()
    s.progress.seconds, s.clock = s.progress.seconds + now - s.clock, now


def _snapshot_if_lowest(s: Session, familiar_error: float) -> None:
    """With familiar snapshots: keep the weights at a new lowest familiar error (NaN never is one)."""
    p = s.progress
    lower = s.config.familiar_snapshots and familiar_error < p.best_familiar_error
    if distributed.broadcast_flag(lower, s.world):
        p.best_familiar_error = familiar_error
        _snapshot(s)


def _snapshot(s: Session) -> None:
    """Weights and step only: a snapshot is for evaluation (`load_run(which=...)`), never for resuming.
    Written before last.pt, so a kill between the two redoes this epoch and rewrites it identically."""
    if s.world.is_main:
        path = checkpoints.checkpoint_path(s.run_dir, checkpoints.snapshot_name(s.progress.step))
        checkpoints.save_weights(path, s.model.state_dict(), s.progress.step)


def _error(s: Session, tensorset: Any) -> float:
    # in eager mode the plain routing path is faster than the fused one (which is for torch.compile); a run
    # trained with the Triton kernels has a GPU for them and evaluates with them (their speed: issue 8)
    with routing_as(s.model, s.config.routing if s.config.routing in ("triton", "cpu") else "plain"):
        return evaluate(s.model, tensorset, s.device, batch_size=s.config.eval_batch_size)["error"]


def _metrics_row(s: Session, val_error: float, familiar_error: float) -> dict[str, Any]:
    p = s.progress
    spread = s.loss_name == "spread"
    return {
        "epoch": p.epoch + 1,
        "step": p.step,
        "train_loss": p.loss_sum / max(p.seen, 1),
        "train_error": p.wrong / max(p.seen, 1),
        "train_images": p.seen,  # this epoch, all ranks
        "val_error": val_error,
        "familiar_error": familiar_error,
        "lr": s.scheduler.get_last_lr()[0],
        "margin": losses.spread_margin(p.step, s.config.margin_step_scale) if spread else math.nan,
        "img_per_s": p.seen / max(p.train_seconds, 1e-9),
        "seconds": p.seconds,
    }

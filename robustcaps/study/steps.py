"""Resumable pipeline steps: a step is finished when its outputs exist and its recorded config matches.

Each finished step leaves `<state_dir>/<name>.json` = {config, outputs, seconds, finished}. A rerun with
the same config and every output still on disk is skipped; anything else (a changed setting, a deleted
output, a crash half-way) runs the step again. A step's config includes the digests of the steps it
depends on, so retraining a model also redoes the attacks on it.

Several processes can share one state directory (`run_shared`, `reproduce --jobs`): each takes the next
step whose dependencies are finished, claiming it with `<name>.claim` (created exclusively, holding the
claimant's pid); a claim whose process has died is taken over, so a killed job's step is run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustcaps.io import atomic_write_json


def canonical(config: Any) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def digest(config: Any) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


@dataclass
class Step:
    name: str
    config: dict[str, Any]
    outputs: tuple[Path, ...]
    run: Callable[[], Any]
    depends: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class StepLog:
    """What happened to each step: ran or skipped, with the seconds it took when it ran."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, status: str, seconds: float) -> None:
        self.records.append({"step": name, "status": status, "seconds": round(seconds, 1)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Pipeline:
    """Runs steps in order, skipping the finished ones; `digests` lets later steps depend on earlier ones."""

    def __init__(self, state_dir: Path, echo: Callable[[str], None] = print) -> None:
        self.state_dir = Path(state_dir)
        self.echo = echo
        self.digests: dict[str, str] = {}
        self.log = StepLog()
        self.owner = f"{os.getpid()} {uuid.uuid4().hex}"  # whose claims are whose, with `run_shared`

    def marker(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def full_config(self, step: Step) -> dict[str, Any]:
        return {**step.config, "_depends": {d: self.digests[d] for d in step.depends}}

    def record(self, name: str) -> dict[str, Any] | None:
        """What step `name`'s marker says of its last finished run; None when it has none or it is garbled."""
        try:
            record = json.loads(self.marker(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_finished(self, step: Step) -> bool:
        record = self.record(step.name)
        if record is None or "config" not in record or not all(Path(p).exists() for p in step.outputs):
            return False
        return canonical(record["config"]) == canonical(self.full_config(step))

    def run(self, step: Step) -> Any:
        config = self.full_config(step)
        self.digests[step.name] = digest(config)
        if self.is_finished(step):
            seconds = self.record(step.name).get("seconds", 0.0)
            self.echo(f"[skip] {step.name}: finished earlier ({seconds:.0f} s), same config")
            self.log.add(step.name, "skipped", seconds)
            return None
        self.echo(f"[run ] {step.name}")
        self.marker(step.name).unlink(missing_ok=True)
        start = time.perf_counter()
        result = step.run()
        seconds = time.perf_counter() - start
        missing = [str(p) for p in step.outputs if not Path(p).exists()]
        assert not missing, f"step {step.name} did not write {missing}"
        record = {
            "config": config,
            "outputs": [str(p) for p in step.outputs],
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(self.marker(step.name), json.loads(canonical(record)))
        self.echo(f"[done] {step.name} in {seconds:.0f} s")
        self.log.add(step.name, "ran", seconds)
        return result

    def claim(self, step: Step) -> bool:
        """Take `step` for this pipeline, unless a live process holds it; a dead one's claim is taken over."""
        path = self.state_dir / f"{step.name}.claim"
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder, age = path.read_text(), time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if holder == self.owner:
                    return True
                if not holder and age < 60:  # created an instant ago; its holder is writing its name
                    return False
                if holder and _alive(int(holder.split()[0])):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as out:
                out.write(self.owner)
            return True
        return False

    def release(self, step: Step) -> None:
        path = self.state_dir / f"{step.name}.claim"
        if path.exists() and path.read_text() == self.owner:
            path.unlink(missing_ok=True)

    def run_shared(self, steps: list[Step], jobs: int, poll: float = 5.0) -> None:
        """Like `run_all`, with other processes working through the same steps: each pass runs (or skips)
        every step whose dependencies are finished and that no live process holds, and waits `poll`
        seconds when none is left to take. Steps another process ran are logged with its seconds. `jobs`:
        how many processes share the steps (for the ETA)."""
        start, pending = time.perf_counter(), list(steps)
        began = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        while pending:
            taken = False
            for step in list(pending):
                if not all(name in self.digests for name in step.depends):
                    continue  # waits for what it depends on
                record = self.record(step.name) if self.is_finished(step) else None
                if record is not None and record.get("finished", "") >= began:
                    self.digests[step.name] = digest(self.full_config(step))
                    self.echo(f"[done] {step.name}: by another job ({record['seconds']:.0f} s)")
                    self.log.add(step.name, "ran by another job", record["seconds"])
                elif record is not None or self.claim(step):
                    try:
                        self.run(step)
                    finally:
                        self.release(step)
                else:
                    continue
                pending.remove(step)
                taken = True
                self.progress(len(steps) - len(pending), len(steps), step.name, start, jobs, pending)
            if pending and not taken:
                time.sleep(poll)

    def run_all(self, steps: list[Step]) -> None:
        """Every step in order, with a progress line after each (`progress`)."""
        start = time.perf_counter()
        for index, step in enumerate(steps, 1):
            self.run(step)
            self.progress(index, len(steps), step.name, start, pending=steps[index:])

    def progress(
        self, done: int, total: int, name: str, start: float, jobs: int = 1, pending: Sequence[Step] = ()
    ) -> None:
        """How many steps are done, the time so far, and an ETA for the `pending` steps shared among `jobs`
        processes: each at the seconds it took when it last ran under another config (its marker), else at
        the mean pace of the steps that ran here (a rough guide: steps differ in size)."""
        ran = [r["seconds"] for r in self.log.records if r["status"].startswith("ran")]
        mean = sum(ran) / len(ran) if ran else None
        earlier = [self.earlier_seconds(step.name) for step in pending]
        guesses = [seconds if seconds is not None else mean for seconds in earlier]
        known = pending and all(g is not None for g in guesses)
        eta = f"; about {sum(guesses) / 60 / jobs:.0f} min left" if known else ""
        elapsed = (time.perf_counter() - start) / 60
        self.echo(f"[{done}/{total}] {name}: {elapsed:.1f} min so far{eta}")

    def earlier_seconds(self, name: str) -> float | None:
        """How long step `name` took when it last finished (its marker's record), if it ever did."""
        seconds = (self.record(name) or {}).get("seconds")
        return float(seconds) if isinstance(seconds, int | float) else None

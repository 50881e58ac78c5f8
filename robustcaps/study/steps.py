"""Resumable pipeline steps: a step is finished when its outputs exist and its recorded config matches.

Each finished step leaves `<state_dir>/<name>.json` = {config, outputs, seconds, finished}. A rerun with
the same config and every output still on disk is skipped; anything else (a changed setting, a deleted
output, a crash half-way) runs the step again. A step's config includes the digests of the steps it
depends on, so retraining a model also redoes the attacks on it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
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


class Pipeline:
    """Runs steps in order, skipping the finished ones; `digests` lets later steps depend on earlier ones."""

    def __init__(self, state_dir: Path, echo: Callable[[str], None] = print) -> None:
        self.state_dir = Path(state_dir)
        self.echo = echo
        self.digests: dict[str, str] = {}
        self.log = StepLog()

    def marker(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def full_config(self, step: Step) -> dict[str, Any]:
        return {**step.config, "_depends": {d: self.digests[d] for d in step.depends}}

    def is_finished(self, step: Step) -> bool:
        path = self.marker(step.name)
        if not path.exists() or not all(Path(p).exists() for p in step.outputs):
            return False
        try:
            recorded = json.loads(path.read_text())["config"]
        except (json.JSONDecodeError, KeyError):
            return False
        return canonical(recorded) == canonical(self.full_config(step))

    def run(self, step: Step) -> Any:
        config = self.full_config(step)
        self.digests[step.name] = digest(config)
        if self.is_finished(step):
            seconds = json.loads(self.marker(step.name).read_text()).get("seconds", 0.0)
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

    def run_all(self, steps: list[Step]) -> None:
        """Every step in order, with a progress line after each: how many are done, the time so far, and
        an ETA at the mean pace of the steps that ran (a rough guide: steps differ in size)."""
        start = time.perf_counter()
        for index, step in enumerate(steps, 1):
            self.run(step)
            ran = [r["seconds"] for r in self.log.records if r["status"] == "ran"]
            left = len(steps) - index
            eta = (
                f"; about {left * sum(ran) / len(ran) / 60:.0f} min left at this pace" if ran and left else ""
            )
            elapsed = (time.perf_counter() - start) / 60
            self.echo(f"[{index}/{len(steps)}] {step.name}: {elapsed:.1f} min so far{eta}")

"""The README's commands under real memory cgroups: do they finish (with the same output) or stop cleanly?

    sudo python benchmarks/memory_limits.py                         # attack, eval, demo steps × none, 8G, 4G
    sudo python benchmarks/memory_limits.py --commands attack --limits none --code /tmp/base --label before

Each command runs in an empty temporary folder, in a child cgroup of this process's own (cgroup v1
memory controller: `memory.limit_in_bytes`; cgroup v2 where its memory controller is enabled there:
`memory.max`), under /usr/bin/time -v. Recorded per run: exit status, wall time, the cgroup's peak
(v1 `memory.max_usage_in_bytes`, v2 `memory.peak`), the peak RSS of /usr/bin/time (the largest process;
it misses peaks before a batch-sizing probe, which resets the process's VmHWM), OOM kills, the batch an
attack chose, the first `Error:` line and whether the printed table equals the unlimited run's.

Commands: `attack` = `robustcaps attack --eps 0.1` (the bundled capsnet-full and CNN, 50 examples);
`demo` = `robustcaps reproduce --preset P --out TMP/results --runs TMP/runs` (what `make demo` runs, at
--demo-preset, default tiny; never into the repository's results/); `eval` = `robustcaps eval` on the
full-split capsule network that demo run trained (the bundled models' 24,300 test images take hours on
2 cores). Needs root on Linux. Merges its rows into benchmarks/results/memory-limits-<machine>.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"none": None, "8G": 8 * 2**30, "4G": 4 * 2**30, "3G": 3 * 2**30, "2G": 2 * 2**30, "1G": 2**30}
V1 = Path("/sys/fs/cgroup/memory")
V2_MOUNTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
KEY = ["label", "command", "limit", "cgroup"]
COMPARED = ("attack", "eval")  # the demo prints its timings: its rows are not compared


def own_cgroup() -> tuple[str, Path] | None:
    """("v1" or "v2", this process's cgroup directory) where a memory limit can be set below it."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and (V1 / path.lstrip("/")).is_dir():
            return "v1", V1 / path.lstrip("/")
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for mount in V2_MOUNTS:
            own = mount / path.lstrip("/")
            if controllers == "" and "memory" in _read(own / "cgroup.subtree_control").split():
                return "v2", own
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def make_child(kind: str, parent: Path, name: str, limit: int | None) -> Path:
    child = parent / name
    child.mkdir(exist_ok=True)
    if limit is not None:
        (child / ("memory.limit_in_bytes" if kind == "v1" else "memory.max")).write_text(str(limit))
    return child


def peak_bytes(kind: str, child: Path) -> int:
    text = _read(child / ("memory.max_usage_in_bytes" if kind == "v1" else "memory.peak")).strip()
    return int(text) if text.isdigit() else -1


def oom_kills(kind: str, child: Path) -> int:
    for line in _read(child / ("memory.oom_control" if kind == "v1" else "memory.events")).splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return -1


def command_line(command: str, work: Path, preset: str, demo_dir: Path | None) -> list[str]:
    robustcaps = [sys.executable, "-m", "robustcaps"]
    if command == "attack":
        return [*robustcaps, "attack", "--eps", "0.1", "--no-progress"]
    if command == "demo":
        return [*robustcaps, "reproduce", "--preset", preset, "--out", str(work / "results"),
                "--runs", str(work / "runs")]  # fmt: skip
    assert demo_dir is not None, "eval needs a demo run first"
    run = next((demo_dir / "runs").glob("capsnet*-full-*"))
    return [*robustcaps, "eval", str(run)]


def run_one(kind: str, parent: Path, label: str, command: str, limit: str, args, demo_dir) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"memlim-{command}-{limit}-"))
    child = make_child(kind, parent, f"robustcaps-bench-{os.getpid()}-{command}-{limit}", LIMITS[limit])
    argv = ["/usr/bin/time", "-v", *command_line(command, work, args.demo_preset, demo_dir)]
    env = dict(os.environ, PYTHONPATH=str(args.code))

    def enter_cgroup() -> None:  # in the child, before exec: everything it starts is limited too
        (child / "cgroup.procs").write_text(str(os.getpid()))

    start = time.monotonic()
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, preexec_fn=enter_cgroup)
    wall = time.monotonic() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    status = re.search(r"Exit status: (\d+)|Command terminated by signal (\d+)", done.stderr)
    row = {
        "label": label, "command": command, "limit": limit, "cgroup": kind,
        "exit_status": done.returncode if not status or status[1] else 128 + int(status[2]),
        "wall_s": round(wall, 1), "cgroup_peak_gib": round(peak_bytes(kind, child) / 2**30, 2),
        "max_rss_gib": round(int(rss[1]) / 2**20, 2) if rss else -1, "oom_kills": oom_kills(kind, child),
        "batch": attack_batches(work), "error": errors[0] if errors else "", "table": table_of(done.stdout),
        "work": str(work),
    }  # fmt: skip
    child.rmdir()
    if done.returncode != 0 and not errors:
        print(done.stderr[-2000:], file=sys.stderr)
    return row


def attack_batches(work: Path) -> str:
    """The batch each attacked model was crafted with (attack_config.json): "capsnet-full:9 cnn-full:50"."""
    found = sorted((work / "robustcaps-attack").glob("*/attack_config.json"))
    return " ".join(f"{p.parent.name}:{json.loads(p.read_text())['batch_size']}" for p in found)


def table_of(stdout: str) -> str:
    """The printed accuracy table (attack's side-by-side, eval's error table), without the temporary paths."""
    lines = [line for line in stdout.splitlines() if not re.match(r"(Wrote|wrote|The full) ", line)]
    return "\n".join(re.sub(r"\S*memlim-[^/\s]*", "TMP", line) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", default="attack,demo,eval", help="comma list of attack, demo, eval")
    parser.add_argument("--limits", default="none,8G,4G", help=f"comma list of {', '.join(LIMITS)}")
    parser.add_argument("--demo-preset", default="tiny", help="reproduce preset of the demo steps")
    parser.add_argument("--code", type=Path, default=REPO, help="robustcaps source tree to run [this one]")
    parser.add_argument("--label", default="after", help="names this code in the rows (e.g. before, after)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/memory-limits-cpu-x86-64-x2-vm.csv"
    )
    args = parser.parse_args()
    found = own_cgroup()
    if found is None:
        sys.exit("no cgroup with a memory controller to create a child in (needs root on Linux)")
    kind, parent = found
    print(f"cgroup {kind} at {parent}; load average {os.getloadavg()} at the start", file=sys.stderr)
    rows, demo_dir = [], None
    for limit in args.limits.split(","):
        for command in args.commands.split(","):
            row = run_one(kind, parent, args.label, command, limit, args, demo_dir)
            demo_dir = Path(row["work"]) if command == "demo" else demo_dir
            rows.append(row)
            print(f"{command} under {limit}: exit {row['exit_status']}, {row['wall_s']} s, "
                  f"peak {row['cgroup_peak_gib']} GiB {row['error']}", file=sys.stderr)  # fmt: skip
    write(pd.DataFrame(rows), args)


def write(table: pd.DataFrame, args) -> None:
    unlimited = table[table["limit"] == "none"].set_index("command")["table"]
    table["same_table_as_unlimited"] = [
        (r.table == unlimited[r.command])
        if r.command in COMPARED and r.command in unlimited and r.exit_status == 0
        else ""
        for r in table.itertuples()
    ]
    table = table.assign(machine="2-core x86_64 VM", kernel=platform.release(), code=_commit(args.code),
                         date=time.strftime("%Y-%m-%d"))  # fmt: skip
    print(table.drop(columns=["table", "work"]).to_string(index=False))
    for row in table[table["command"] == "attack"].itertuples():
        print(f"\n{row.label} attack under {row.limit}:\n{row.table}")
    if args.out.exists():
        old = pd.read_csv(args.out, keep_default_na=False)
        fresh = set(map(tuple, table[KEY].astype(str).values))
        table = pd.concat([old[[tuple(k) not in fresh for k in old[KEY].astype(str).values]], table])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["work"]).to_csv(args.out, index=False)
    print(f"wrote {args.out}", file=sys.stderr)


def _commit(code: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()

"""The package works where triton cannot be imported (macOS, Windows, CPU-only torch wheels): only
routing="triton" needs it, and asking for it there is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys

# Runs robustcaps with the triton import blocked (a None entry in sys.modules makes `import triton` fail).
BLOCKED = "import sys; sys.modules['triton'] = None; from robustcaps.cli import main; main(sys.argv[1:])"


def _robustcaps(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", BLOCKED, *args]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_the_cli_and_cpu_training_run_without_triton(rendered_root, tmp_path):
    for args in (["--help"], ["train", "--help"], ["attack", "--help"]):
        done = _robustcaps(*args)
        assert done.returncode == 0, done.stderr[-2000:]
    train = ["train", "--data", str(rendered_root), "--model", "capsnet-small", "--steps", "2"]
    train += "--batch-size 4 --device cpu --model-option conv1_channels=8 --set max_per_part=40".split()
    done = _robustcaps(*train, "--out", str(tmp_path / "plain"))
    assert done.returncode == 0, done.stderr[-2000:]
    done = _robustcaps(*train, "--routing", "triton", "--out", str(tmp_path / "triton"))
    assert done.returncode == 1 and "routing 'triton' needs the triton package" in done.stderr, done.stderr
    # torch itself may warn that triton is missing; ours is one line, the last, without a traceback
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("Error: ")

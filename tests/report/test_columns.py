"""The committed results hold the columns the report reads by name, and no path of the machine they ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from robustcaps.report import columns as col

RESULTS = Path(__file__).resolve().parents[2] / "results"
SCHEMAS = {
    "attacks/*/summary.csv": col.SUMMARY,
    "attacks/*/per_example.csv": col.PER_EXAMPLE,
    "attacks/*/checks.csv": col.CHECKS,
    "clean/clean_error.csv": col.CLEAN_ERROR,
    "viewpoint/*.csv": col.VIEWPOINT,
}


def committed(pattern: str) -> list[Path]:
    return sorted(RESULTS.glob(pattern)) + sorted(RESULTS.glob(f"*/{pattern}"))


@pytest.mark.parametrize("pattern", SCHEMAS)
def test_every_committed_csv_has_the_columns_the_report_reads(pattern):
    paths = committed(pattern)
    assert paths, pattern
    for path in paths:
        header = pd.read_csv(path, nrows=0).columns
        assert set(SCHEMAS[pattern]) <= set(header), (path, set(SCHEMAS[pattern]) - set(header))


def test_committed_csvs_name_run_folders_and_data_without_machine_paths():
    for path in committed("attacks/*/summary.csv") + committed("viewpoint/*.csv"):
        frame = pd.read_csv(path)
        assert not frame[col.RUN_DIR].astype(str).str.startswith(("/", "~")).any(), path
        if col.DATASET in frame:
            identities = frame[col.DATASET].map(json.loads)
            assert all("root" not in identity for identity in identities), path
            assert all(identity["sha256"] or identity.get("md5_verified") for identity in identities), path

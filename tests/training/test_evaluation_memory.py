"""Evaluation batches on a CPU fit the memory budget (robustcaps.memory), or stop before any work."""

from __future__ import annotations

import pytest
import torch

from robustcaps.errors import RobustcapsError
from robustcaps.memory import Budget
from robustcaps.training import evaluation
from robustcaps.training.config import TrainConfig, build_model, load_split


@pytest.fixture
def small(rendered_root):
    data = load_split(TrainConfig(model="cnn-small", data=str(rendered_root), max_per_part=40))
    return build_model(TrainConfig(model="cnn-small")), data.test


def test_a_cpu_evaluation_batch_fits_the_budget_with_the_same_results(small, monkeypatch):
    model, test = small
    whole = evaluation.evaluate(model, test, batch_size=64)
    per_example = evaluation._measured[model][(False, tuple(test.images.shape[1:]))]
    assert per_example is not None and per_example > 0  # measured once, kept for the next call
    budget = Budget(int(3.5 * per_example / evaluation.SHARE), "cgroup v2 memory.max of /sys/fs/cgroup/job")
    monkeypatch.setattr(evaluation, "memory_budget", lambda: budget)
    real, sizes = evaluation.predict_views, []
    monkeypatch.setattr(
        evaluation, "predict_views", lambda m, x, crops=False: sizes.append(len(x)) or real(m, x, crops)
    )
    fitted = evaluation.evaluate(model, test, batch_size=64)
    assert max(sizes) == 3 and sum(sizes) == len(test)  # not measured again: every call is a batch
    assert fitted["error"] == whole["error"] and torch.equal(fitted["wrong"], whole["wrong"])
    sizes.clear()
    evaluation.evaluate(model, test, "cpu", batch_size=2)
    assert max(sizes) == 2  # never above what was asked


def test_where_one_example_does_not_fit_evaluation_stops_with_the_budget_and_its_source(small, monkeypatch):
    model, test = small
    where = "cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/job: 1.00 GiB limit, 1.00 GiB in use"
    monkeypatch.setattr(evaluation, "memory_budget", lambda: Budget(2**20, where))
    monkeypatch.setattr(evaluation, "bytes_per_example", lambda step, images: 2**21)
    monkeypatch.setattr(evaluation, "predict_views", lambda *_: pytest.fail("evaluated past the budget"))
    with pytest.raises(RobustcapsError) as error:
        evaluation.evaluate(model, test, batch_size=64)
    assert where in str(error.value) and "smaller model" in str(error.value)

"""Batches that fit: a CPU sizes the batch from a measured step and the memory budget (or stops before it
starts), a GPU halves a batch that runs out."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from robustcaps.attacks import memory, sweep
from robustcaps.attacks.adapters import AttackConfig
from robustcaps.attacks.run import attack_model
from robustcaps.attacks.sweep import Victim
from robustcaps.errors import RobustcapsError
from robustcaps.memory import Budget
from tests.attacks.test_attack import eval_set, toy_data


def test_a_batch_that_runs_out_of_memory_is_crafted_in_halves_with_the_same_results(
    toy, tmp_path, monkeypatch
):
    config = AttackConfig(
        attacks=("fgsm", "bim"), eps=(0.0, 0.05), units="pixel", steps=3, checks=False, batch_size=10
    )
    whole = attack_model(Victim(toy, "toy"), eval_set(30), config, tmp_path / "whole", progress=False)
    real, sizes = sweep.craft, []

    def short_of_memory(attack, model, images, *args):
        sizes.append(len(images))
        if len(images) > 3:
            raise torch.OutOfMemoryError("out of memory (test)")
        return real(attack, model, images, *args)

    monkeypatch.setattr(sweep, "craft", short_of_memory)
    halved = attack_model(Victim(toy, "toy"), eval_set(30), config, tmp_path / "halved", progress=False)
    assert max(s for s in sizes if s <= 3) <= 3 and 10 in sizes  # tried whole, crafted in halves
    columns = ["example", "attack", "eps_pixel", "prediction"]
    pd.testing.assert_frame_equal(whole.per_example[columns], halved.per_example[columns])


def test_a_cpu_batch_is_sized_from_a_measured_step_and_the_memory_budget(toy, monkeypatch):
    images, _ = toy_data(20, seed=3)
    per_example = memory._per_example(toy, toy, images)
    assert per_example is not None and per_example > 0  # Linux: the peak resets through /proc
    budget = Budget(int(7.5 * per_example / memory.SAFETY), "cgroup v1 memory.limit_in_bytes of /x")
    monkeypatch.setattr(memory, "memory_budget", lambda: budget)
    monkeypatch.setattr(memory, "_per_example", lambda model, crafter, images: per_example)
    assert memory.fitting_batch(toy, images, 100, "cpu") == 7
    assert memory.fitting_batch(toy, images, 5, "cpu") == 5  # never above what was asked
    assert memory.fitting_batch(toy, images, 100, "cuda") == 100  # a GPU halves on running out instead
    monkeypatch.setattr(memory, "memory_budget", lambda: None)  # not Linux: as asked
    assert memory.fitting_batch(toy, images, 100, "cpu") == 100


def test_where_one_example_does_not_fit_the_sweep_stops_before_writing_anything(toy, tmp_path, monkeypatch):
    where = "cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/job: 1.00 GiB limit, 0.90 GiB in use"
    monkeypatch.setattr(memory, "memory_budget", lambda: Budget(2**20, where))
    monkeypatch.setattr(memory, "_per_example", lambda model, crafter, images: 2**20)
    config = AttackConfig(attacks=("fgsm",), eps=(0.0, 0.1), units="pixel", checks=False, fit_batch=True)
    with pytest.raises(RobustcapsError) as error:
        attack_model(Victim(toy, "toy"), eval_set(12), config, tmp_path / "out", progress=False)
    assert where in str(error.value) and "--batch-size 1" in str(error.value)
    assert not (tmp_path / "out").exists()
    given = replace(config, fit_batch=False, batch_size=4)  # --batch-size given: used as it is
    attack_model(Victim(toy, "toy"), eval_set(12), given, tmp_path / "out", progress=False)


def test_a_fitted_batch_is_recorded_as_used(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(
        "robustcaps.attacks.run.fitting_batch", lambda model, images, requested, device, crafter: 6
    )
    config = AttackConfig(attacks=("fgsm",), eps=(0.0,), units="pixel", checks=False, fit_batch=True)
    attack_model(Victim(toy, "toy"), eval_set(12), config, tmp_path, progress=False)
    recorded = json.loads((tmp_path / "attack_config.json").read_text())
    assert (recorded["batch_size"], recorded["fit_batch"]) == (6, False)

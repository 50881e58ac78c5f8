"""The memory budget read from fixture trees laid out as /proc and /sys/fs/cgroup are on Linux."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustcaps.errors import RobustcapsError
from robustcaps.memory import Budget, batch_within, memory_budget

GiB = 2**30
V1_UNLIMITED = 9223372036854771712  # what cgroup v1 writes for "no limit"
HYBRID = "9:name=systemd:/\n4:memory:{v1}\n2:cpu,cpuacct:/\n0::{v2}\n"


def write(root: Path, files: dict[str, str | int]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{text}\n")
    return root


def meminfo(available_gib: float) -> dict[str, str]:
    kib = int(available_gib * GiB / 1024)
    return {"proc/meminfo": f"MemTotal:       25000000 kB\nMemAvailable:   {kib} kB\nCached: 1 kB"}


def v1(path: str, limit: int, usage: int, inactive_file: int = 0) -> dict[str, str | int]:
    base = f"sys/fs/cgroup/memory{path}"
    return {
        f"{base}/memory.limit_in_bytes": limit,
        f"{base}/memory.usage_in_bytes": usage,
        f"{base}/memory.stat": f"cache 5\ninactive_file 1\ntotal_inactive_file {inactive_file}",
    }


def v2(path: str, limit: str | int, current: int, inactive_file: int = 0) -> dict[str, str | int]:
    base = f"sys/fs/cgroup{path}"
    return {
        f"{base}/memory.max": limit,
        f"{base}/memory.current": current,
        f"{base}/memory.stat": f"anon 5\nfile 9\ninactive_file {inactive_file}",
    }


def test_without_a_cgroup_limit_the_budget_is_memavailable(tmp_path):
    root = write(
        tmp_path,
        {
            **meminfo(20),
            "proc/self/cgroup": HYBRID.format(v1="/user.slice", v2="/user.slice"),
            **v1("", V1_UNLIMITED, 5 * GiB),
            **v1("/user.slice", V1_UNLIMITED, GiB),
            "sys/fs/cgroup/unified/cgroup.controllers": "hugetlb",
        },
    )
    assert memory_budget(root) == Budget(20 * GiB, "MemAvailable of /proc/meminfo")


def test_cgroup_v1_limit_less_its_use_in_a_nested_cgroup(tmp_path):
    own = "/process_api/6d32/robustcaps-8g"
    root = write(
        tmp_path,
        {
            **meminfo(20),
            "proc/self/cgroup": HYBRID.format(v1=own, v2="/"),
            **v1("", V1_UNLIMITED, 9 * GiB),
            **v1("/process_api", V1_UNLIMITED, 3 * GiB),
            **v1("/process_api/6d32", V1_UNLIMITED, 3 * GiB),
            **v1(own, 8 * GiB, 3 * GiB, inactive_file=GiB),
        },
    )
    budget = memory_budget(root)
    # the inactive file cache is reclaimed before the kernel kills: 8 − (3 − 1) GiB are left
    assert budget.bytes == 6 * GiB
    assert budget.source.startswith(f"cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory{own}: ")
    assert "8.00 GiB limit, 2.00 GiB in use" in str(budget)


def test_an_ancestors_limit_binds_a_process_in_an_unlimited_child(tmp_path):
    # SLURM: the job's cgroup holds --mem, the task's cgroup below it has no limit of its own
    job, task = "/slurm/uid_1000/job_42", "/slurm/uid_1000/job_42/step_0/task_0"
    root = write(
        tmp_path,
        {
            **meminfo(20),
            "proc/self/cgroup": f"4:memory:{task}\n",
            **v1(task, V1_UNLIMITED, GiB),
            **v1(f"{job}/step_0", V1_UNLIMITED, GiB),
            **v1(job, 4 * GiB, GiB),
        },
    )
    budget = memory_budget(root)
    assert budget.bytes == 3 * GiB and f"/sys/fs/cgroup/memory{job}:" in budget.source


def test_cgroup_v2_max_less_current_and_max_means_no_limit(tmp_path):
    files = {
        **meminfo(20),
        "proc/self/cgroup": "0::/system.slice/job.scope\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu memory pids",
        **v2("/system.slice", "max", 3 * GiB),
        **v2("/system.slice/job.scope", 4 * GiB, GiB),
    }
    budget = memory_budget(write(tmp_path, files))
    assert budget.bytes == 3 * GiB
    assert budget.source.startswith("cgroup v2 memory.max of /sys/fs/cgroup/system.slice/job.scope: ")
    write(tmp_path, v2("/system.slice/job.scope", "max", GiB))
    assert memory_budget(tmp_path).source == "MemAvailable of /proc/meminfo"


def test_inside_a_container_the_mount_is_the_containers_own_cgroup(tmp_path):
    # /proc/self/cgroup names the host's path, which does not exist inside the container's mount
    root = write(
        tmp_path,
        {
            **meminfo(60),
            "proc/self/cgroup": "0::/docker/0123abcd\n",
            "sys/fs/cgroup/cgroup.controllers": "memory",
            **v2("", 2 * GiB, GiB // 2, inactive_file=GiB),
        },
    )
    assert memory_budget(root).bytes == 2 * GiB  # more inactive cache than use: none in use


def test_the_hybrid_layout_reads_v2_under_unified_and_the_smallest_budget_wins(tmp_path):
    root = write(
        tmp_path,
        {
            **meminfo(20),
            "proc/self/cgroup": HYBRID.format(v1="/a", v2="/b"),
            **v1("/a", 6 * GiB, GiB),
            "sys/fs/cgroup/unified/b/memory.max": 5 * GiB,
            "sys/fs/cgroup/unified/b/memory.current": 2 * GiB,
        },
    )
    budget = memory_budget(root)
    assert budget.bytes == 3 * GiB and "cgroup v2 memory.max of /sys/fs/cgroup/unified/b" in budget.source
    write(root, meminfo(2.5))
    assert memory_budget(root).source == "MemAvailable of /proc/meminfo"


def test_missing_or_unreadable_files_are_no_limit(tmp_path):
    assert memory_budget(tmp_path) is None  # not Linux: nothing to read
    root = write(
        tmp_path,
        {
            **meminfo(7),
            "proc/self/cgroup": "4:memory:/gone\n0::/also-gone\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "garbage",
        },
    )
    assert memory_budget(root).bytes == 7 * GiB
    # a limit already exceeded leaves nothing, not a negative budget
    write(root, {"proc/self/cgroup": "4:memory:/full\n", **v1("/full", GiB, 2 * GiB)})
    assert memory_budget(root).bytes == 0


def test_this_machine_reads_a_positive_budget():
    budget = memory_budget()
    assert budget is None or budget.bytes > 0


def test_a_batch_fits_the_budget_share_and_one_example_too_many_is_an_error():
    budget = Budget(10 * GiB, "cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/job")
    assert batch_within(budget, GiB, 100, share=0.3, need=2.0, advice="do X") == 3
    assert batch_within(budget, GiB, 2, share=0.3, need=2.0, advice="do X") == 2  # never above what was asked
    assert batch_within(budget, 4 * GiB, 100, share=0.3, need=2.0, advice="do X") == 1  # within the need
    assert batch_within(None, GiB, 100, share=0.3, need=2.0, advice="do X") == 100  # unknown: as asked
    assert batch_within(budget, None, 100, share=0.3, need=2.0, advice="do X") == 100
    with pytest.raises(RobustcapsError) as error:
        batch_within(budget, 6 * GiB, 100, share=0.3, need=2.0, advice="do X")
    message = str(error.value)
    assert "\n" not in message and message.endswith("; do X")
    assert (
        "12.00 GiB" in message
        and "10.00 GiB (cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/job)" in message
    )

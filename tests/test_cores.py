"""The cores a run plans for: its CPU affinity, and no more than its container's
CPU quota (a pod's limit), read from the control group as Linux exposes it."""

from __future__ import annotations

import os

from loadgen.cores import cores, cpu_quota

AFFINITY = len(os.sched_getaffinity(0))


def test_without_a_quota_the_cores_are_those_the_process_may_run_on(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    assert cores(tmp_path) == AFFINITY


def test_a_cgroup_v2_quota_of_a_core_and_a_half_is_two_cores_at_most(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 1.5
    assert cores(tmp_path) == min(AFFINITY, 2)


def test_a_quota_under_one_core_still_plans_one(tmp_path):
    (tmp_path / "cpu.max").write_text("25000 100000\n")
    assert cores(tmp_path) == 1


def test_a_cgroup_v1_cfs_quota_counts_too(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 1.0
    assert cores(tmp_path) == 1


def test_a_cgroup_v1_without_a_quota_is_no_limit(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) is None


def test_no_control_group_files_leave_the_affinity(tmp_path):
    assert cpu_quota(tmp_path / "absent") is None
    assert cores(tmp_path / "absent") == AFFINITY

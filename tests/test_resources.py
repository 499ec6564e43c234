"""How many CPUs a trial asks for: the confirmation's last runs take the CPUs the search leaves idle."""

from __future__ import annotations

import pytest

from tuning.resources import cpus_per_run, cpus_to_fill


@pytest.mark.parametrize(
    "nodes, cpus_per_trial, runs, expected",
    [
        ([2], 1, 1, 2),  # the quickstart's one confirmation run: both cores
        ([2], 1, 2, 1),  # as many runs as slots: as asked
        ([2], 1, 3, 1),  # more runs than slots: as asked, never less
        ([16], 1, 3, 5),  # 3 x 5 CPUs all run at once on 16
        ([16], 2, 3, 4),  # multiples of the request: 3 x 4
        ([2], 0.5, 1, 2),
        ([4, 4], 1, 2, 4),  # one run per node
        ([4, 4], 1, 3, 2),  # 2 + 2 on one node, 2 on the other
        ([8, 1, 1], 1, 2, 4),  # not 5: two runs of 5 would not run at once
        ([2], 4, 1, 4),  # a request no node holds stays what it is (the search already refused it)
    ],
)
def test_runs_fewer_than_slots_share_the_idle_cpus_and_still_run_at_once(nodes, cpus_per_trial, runs, expected):
    cpus = cpus_to_fill(nodes, cpus_per_trial, runs)
    assert cpus == expected
    if cpus > cpus_per_trial:
        assert sum(int(n // cpus) for n in nodes) >= runs


def test_on_this_cluster_one_cpu_run_takes_both_cpus_and_a_gpu_run_keeps_its_request(ray_session):
    assert cpus_per_run(1, 0, 1) == 2  # the session's Ray has 2 CPUs
    assert cpus_per_run(1, 0, 2) == 1
    assert cpus_per_run(1, 0.5, 1) == 1  # GPU trials: their speed is the GPU's

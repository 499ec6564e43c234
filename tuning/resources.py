"""Check a per-trial resource request against the cluster before any trial is queued, and count
how many trials the cluster holds at once.

Ray would otherwise leave an impossible trial PENDING forever (a GPU on a CPU-only cluster,
2 GPUs per trial where no node has 2).
"""

from __future__ import annotations

import math

from fracture_models.errors import UserError


def _alive_nodes() -> list[dict]:
    """Each alive node's resources on the connected Ray cluster ({"CPU": 2.0, "GPU": 1.0, ...})."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _fits(capacity: float, need: float) -> int:
    """How many requests of `need` fit in `capacity` (0.1 x 10 fills 1.0 despite float rounding)."""
    return math.floor(capacity / need + 1e-9)


def default_gpus_per_trial() -> float:
    """1 where the cluster has GPUs, else 0."""
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def check_trial_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Raise a UserError unless at least one alive node can hold one trial."""
    if cpus_per_trial <= 0 and gpus_per_trial <= 0:
        raise UserError("A trial needs some resources: --cpus-per-trial or --gpus-per-trial must be > 0.")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise UserError(f"--gpus-per-trial above 1 must be a whole number, got {gpus_per_trial}.")
    nodes = _alive_nodes()
    fits = [n for n in nodes if n.get("CPU", 0) >= cpus_per_trial and n.get("GPU", 0) >= gpus_per_trial]
    if fits:
        return
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    if gpus_per_trial > 0 and total_gpus == 0:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial:g} asked for, but this Ray cluster has no GPUs. "
            "Use --gpus-per-trial 0 to train on CPUs, or connect to a cluster with GPUs with --address."
        )
    raise UserError(
        f"No node can hold one trial of {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs; the largest node has "
        f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs. Lower --cpus-per-trial / --gpus-per-trial "
        "(fractions such as 0.25 GPU share a device between trials)."
    )


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials of this size the alive nodes hold at once (at least 1).

    The search's concurrency limit when the user sets none: with a searcher and no limit, Ray Tune
    keeps one trial pending at a time, so a cluster fills one trial start after another (a few
    seconds each) instead of all at once; a limit also keeps Optuna from proposing trials that
    would only wait for room, before the results of those running are in.
    """
    needs = [(name, need) for name, need in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial)) if need > 0]
    slots = sum(min((_fits(node.get(name, 0), need) for name, need in needs), default=0) for node in _alive_nodes())
    return max(slots, 1)


def cpus_to_fill(node_cpus: list[float], cpus_per_trial: float, runs: int) -> float:
    """CPUs for each of `runs` CPU trials that are all there is left to run, on nodes with
    `node_cpus` CPUs: the largest multiple of `cpus_per_trial` at which all of them still run at
    once. Fewer trials than the nodes hold then share the idle CPUs (Ray gives torch one thread per
    CPU) instead of leaving them idle: one run on 2 cores trains with 2 threads."""
    if runs < 1 or cpus_per_trial <= 0:
        return cpus_per_trial
    for share in range(_fits(max(node_cpus, default=0), cpus_per_trial), 1, -1):
        cpus = cpus_per_trial * share
        if sum(_fits(n, cpus) for n in node_cpus) >= runs:
            return cpus
    return cpus_per_trial


def cpus_per_run(cpus_per_trial: float, gpus_per_trial: float, runs: int) -> float:
    """CPUs for each of `runs` trials that are all there is left to run (a confirmation):
    `cpus_to_fill` over this cluster's alive nodes for CPU trials; GPU trials keep their request
    (their speed is the GPU's)."""
    if gpus_per_trial > 0:
        return cpus_per_trial
    return cpus_to_fill([node.get("CPU", 0) for node in _alive_nodes()], cpus_per_trial, runs)

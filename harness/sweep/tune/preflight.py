"""Before any trial starts: every alive node of the cluster can write the experiment folder and see
each trial's data. Without it a node that lacks the shared mount fails its trials one by one, after
the others have spent hours; with it the sweep stops at once, naming the node and the path.

One tiny Ray task per node (no CPU reserved, pinned with a hard node affinity), run in parallel.
"""
from __future__ import annotations

import time

from harness.sweep.checks import SweepError

PROBE_PREFIX = ".mfcbench-preflight-"
# A node whose task has not answered by then is named as unreachable; a healthy node answers in
# well under a second (measured: see docs/sweeps.md, "On a cluster").
PREFLIGHT_TIMEOUT_S = 120


def alive_nodes() -> list[dict]:
    """ray.nodes() of the connected cluster, without the nodes it lost."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_node(experiment_dir: str, data: list[tuple[str, str]]) -> dict:
    """On one node: {"host": hostname, "problems": ["path: why", ...]}. Writes and removes one probe file
    in experiment_dir (a folder or a bucket URI); only checks that each data path exists (reading it is the trial's work)."""
    import os
    import socket

    from harness.storage import Bucket, is_bucket

    problems = []
    probe = f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}"
    try:
        if is_bucket(experiment_dir):  # through pyarrow, with this node's credentials and endpoint
            bucket = Bucket(experiment_dir)
            bucket.write_text(probe, "probe")
            bucket.delete(probe)
        else:
            with open(os.path.join(experiment_dir, probe), "w") as f:
                f.write("probe")
            os.remove(os.path.join(experiment_dir, probe))
    except (OSError, ValueError) as error:
        problems.append(f"experiment folder {experiment_dir}: not writable here ({getattr(error, 'strerror', None) or error})")
    for what, path in data:
        if not os.path.exists(path):
            problems.append(f"{what} {path}: not found here")
    return {"host": socket.gethostname(), "problems": problems}


def preflight(experiment_dir, data: list[tuple[str, str]], timeout_s: float = PREFLIGHT_TIMEOUT_S) -> tuple[int, float]:
    """Run check_node on every alive node; returns (nodes checked, seconds taken). Raises SweepError naming
    each node (address, hostname) and path that failed, and each node that did not answer in timeout_s."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = time.monotonic()
    remote_check = ray.remote(num_cpus=0, max_retries=0)(check_node)
    nodes = alive_nodes()
    pending = {remote_check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(str(experiment_dir), data): n for n in nodes}
    ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    failures = []
    for ref in ready:
        node = pending[ref]
        where = f"node {node.get('NodeManagerAddress', '?')}"
        try:
            answer = ray.get(ref)
        except Exception as error:  # the task itself could not run there: the node is named with why
            failures.append(f"{where}: the check could not run ({type(error).__name__}: {error})")
            continue
        failures += [f"{where} ({answer['host']}): {problem}" for problem in answer["problems"]]
    for ref in not_ready:
        ray.cancel(ref, force=True)
        failures.append(f"node {pending[ref].get('NodeManagerAddress', '?')}: did not answer the check within "
                        f"{timeout_s:g} s")
    if failures:
        raise SweepError("preflight: not every node can run this sweep (no trial was started):\n"
                         + "\n".join(f"  {line}" for line in failures)
                         + "\nstorage and data must be on a filesystem every node mounts at the same path")
    return len(nodes), time.monotonic() - started

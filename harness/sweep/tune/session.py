"""The driver's Ray: a local one started on loopback, or an existing cluster probed before joining it;
Ray's log output made plain; whether the cluster can hold a trial's resources."""
from __future__ import annotations

import os
import re
import socket
import sys
import time
from typing import Any


from harness.sweep.checks import SweepError, address_problem
from harness.sweep.tune.preflight import alive_nodes


# Ray rewrites exactly "127.0.0.1" to the host's outward address (services.resolve_ip_for_localhost),
# so a local Ray that must stay on loopback takes another address of 127.0.0.0/8.
LOOPBACK_NODE_IP = "127.0.0.2"
# ray.init(address=HOST:PORT) with nothing there retries for minutes (measured on Ray 2.60: still
# retrying after 200 s), so the address is probed first.
CONNECT_WAIT_S = 10


def start_ray(address: str | None, num_cpus: int | None = None, object_store_mb: int = 512,
              temp_dir: str | None = None, quiet: bool = False) -> None:
    """Join `address`, or start a local Ray whose node address is on loopback (127.0.0.2), with the
    dashboard and usage stats off and a 512 MB object store (trials load their own data).
    Ray's gRPC servers still listen on every interface; Ray 2.60 has no option to narrow that.
    `quiet`: Ray's driver logs at WARNING and the workers' output stays in Ray's log files.
    Raises SweepError when no cluster answers at `address`."""
    import logging

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    no_colour_unless_terminal()
    if ray.is_initialized():
        return
    common: dict[str, Any] = dict(log_to_driver=not quiet, logging_level=logging.WARNING if quiet else logging.INFO)
    if address:
        _probe_address(address)
        try:
            ray.init(address=address, **common)
        except ConnectionError as error:
            raise SweepError(f"--address {address}: {error}") from None
        return
    kwargs: dict[str, Any] = dict(_node_ip_address=LOOPBACK_NODE_IP, include_dashboard=False,
                                  object_store_memory=object_store_mb * 1024 * 1024, **common)
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)


def no_colour_unless_terminal() -> None:
    """Ray colours the "(trainable pid=...)" prefix of worker lines and its "[repeated Nx across
    cluster]" summaries with ANSI codes, terminal or not. RAY_DEDUP_LOGS is read when ray is first
    imported, so this runs before that where it can (run_sweep). A user's own setting wins."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if "ray" in sys.modules:  # the handlers exist once ray is imported; the next call (start_ray) adds it
            _strip_ansi_from_ray_logs()


ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def _strip_ansi_from_ray_logs() -> None:
    """Ray's logged trial tracebacks colour the worker's name (RayTaskError, unconditionally)."""
    import logging

    class StripAnsi(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = ANSI_CODE.sub("", str(record.msg))
            if record.exc_info and not record.exc_text:
                record.exc_text = ANSI_CODE.sub("", logging.Formatter().formatException(record.exc_info))
            return True

    for handler in logging.getLogger("ray").handlers:
        if not any(type(f).__name__ == "StripAnsi" for f in handler.filters):
            handler.addFilter(StripAnsi())


def _probe_address(address: str) -> None:
    """Raise SweepError unless something accepts TCP connections at the cluster's address within
    CONNECT_WAIT_S. `auto` is resolved as ray.init does (RAY_ADDRESS, then the last `ray start` here)."""
    from ray._private.services import canonicalize_bootstrap_address

    if problem := address_problem(address):
        raise SweepError(problem)
    try:
        target = canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise SweepError(f"--address {address}: no running Ray cluster found (RAY_ADDRESS is unset and no "
                         "`ray start` ran on this machine); start one with `ray start --head --port=6379` "
                         "or give its HOST:PORT") from None
    except ValueError:
        raise SweepError(f"--address {address!r}: expected HOST:PORT (the head's GCS port, e.g. "
                         "10.0.0.1:6379) or auto") from None
    if target is None:  # "local": ray.init starts a new local instance
        return
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise SweepError(f"--address {address!r}: expected HOST:PORT, got port {port!r}")
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise SweepError(
                    f"--address {address}: no Ray cluster answers at {host}:{port} ({error.strerror or error}; "
                    f"tried for {CONNECT_WAIT_S} s). Is the Ray head running there (`ray start --head`) and is that port "
                    "reachable from here?") from None
            time.sleep(1)


def check_cluster_fits(cpu: float, gpu: float, allow_pending: bool = False) -> None:
    """Raise SweepError when no node of the connected cluster could ever hold one trial (a trial's
    resources are one bundle on one node); Tune would otherwise leave every trial pending forever.
    `allow_pending`: an autoscaling cluster will add such nodes, so only say so."""
    import ray

    nodes = alive_nodes()
    if any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes):
        return
    shown = [f"{n.get('NodeManagerAddress', '?')}: {n['Resources'].get('CPU', 0):g} CPU, "
             f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes[:10]]
    if len(nodes) > 10:
        shown.append(f"... and {len(nodes) - 10} more")
    total = ray.cluster_resources()
    text = (f"resources: each trial needs {cpu:g} CPU and {gpu:g} GPU on one node, and no node of this cluster "
            f"has that. Nodes: {'; '.join(shown) or 'none'}. Cluster total: {total.get('CPU', 0):g} CPU, "
            f"{total.get('GPU', 0):g} GPU.")
    if allow_pending:
        print(f"{text} Waiting for the autoscaler to add a node (--allow-pending).", flush=True)
        return
    raise SweepError(f"{text} Lower `resources` in the sweep file, or pass --allow-pending on an autoscaling "
                     "cluster that will add such nodes (nothing was started)")

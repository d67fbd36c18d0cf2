import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(items):
    """Every test that uses the in-process local Ray is a `ray` test (`-m "not ray"` deselects them);
    tests that start Ray in a subprocess carry the marker themselves."""
    for item in items:
        if "local_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory):
    """One HOME for every in-process local Ray of the session: Ray 2.60 turns on token
    authentication and keeps the token in ~/.ray/auth_token, and a second ray.init in the same
    process looks for it there (a fresh HOME then fails the GCS start)."""
    return tmp_path_factory.mktemp("ray-home")


@pytest.fixture(scope="module")
def local_ray(ray_home):
    """One local Ray per test module for in-process sweeps, ended with its processes afterwards."""
    import ray

    from harness.sweep.tune.session import start_ray
    from ray_helpers import kill_all, processes_of, short_temp_dir

    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(ray_home)
    temp = short_temp_dir()
    start_ray(None, num_cpus=2, object_store_mb=128, temp_dir=temp)
    yield
    ray.shutdown()
    kill_all(processes_of(temp))
    if old_home is not None:
        os.environ["HOME"] = old_home


@pytest.fixture
def tune_session(monkeypatch):
    """tune.report / get_context as a sweep trial sees them, without Ray; returns the list of reports.
    A CPU trial (`ray.get_gpu_ids` gives none); a test that needs a GPU trial patches it again."""
    from types import SimpleNamespace

    import ray
    from ray import tune

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "abc_00000"))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])  # unpatched it would start a Ray
    return reports


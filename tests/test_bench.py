"""Smoke runs of the throughput benchmarks (issue 12): they run and print their tables; the numbers of a
--quick run mean nothing."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCH.parent)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the GPU benchmark would run")
def test_gpu_benchmark_without_cuda_says_so():
    done = run("gpu_throughput.py")
    assert done.returncode == 1
    assert "needs a CUDA GPU and none is visible here" in done.stderr and not done.stdout


@pytest.mark.slow
def test_cpu_benchmark_quick_prints_its_three_tables():
    done = run("train_throughput.py", "--quick")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for title in ("Table 1: S seeds packed", "Table 2: fixed costs per trial", "Table 3: the trainer against"):
        assert title in out
    table1 = [line.split() for line in out.splitlines() if line.startswith(("demo digits", "mnist FC ladder"))]
    assert {(" ".join(row[:-7]), row[-7], row[-6]) for row in table1 if row[-2].endswith("%")} == \
        {(model, "1", s) for model in ("demo digits", "mnist FC ladder") for s in ("1", "2")}
    assert "fp32 matmul rate" in out and "FLOPs per sample" in out
    assert "prior init: GMM fit, facet 1" in out and "one evaluation, all facets on" in out


@pytest.mark.slow
def test_gpu_benchmark_table_logic_on_the_cpu():
    done = run("gpu_throughput.py", "--cpu-smoke", "--precisions", "fp32", "bf16", "--seeds", "1", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("demo digits", "mnist FC"))]
    assert len(rows) == 2 * 2 * 2 and all(row[-3].endswith("x") for row in rows)  # models x precisions x S
    assert "failed" not in done.stdout

#!/usr/bin/env bash
# The GPU numbers mfcbench has not measured yet, in one run of under 10 minutes on one H100/H200:
#   1. the GPU, the driver and torch;
#   2. a packed 10-seed paper-mnist trial through the trainer (bench/cuda_trial.py --seeds 10;
#      Fashion-MNIST standing in for MNIST, 2 epochs per progressive step): samples/s and the
#      projected time of the full 402-epoch, 10-seed study (the target: under 10 minutes);
#   3. bench/gpu_throughput.py: packed against sequential seeds, fp32/bf16/fp16, eager and CUDA graphs;
#   before them, bench/cuda_trial.py: one unpacked paper-mnist trial's samples/s, evaluation share and
#   fixed costs.
# Every step has its own time limit, and each output goes to $OUT (default gpu-out/).
#
# On a machine without PyPI (the device tool's): it needs pydantic, which such images lack. Here, once:
#   echo /.whl/ >> .git/info/exclude; echo /data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
#     typing-inspection
#   mkdir -p data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/
# then run it there with carry [".whl", "data"] and the command
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to the terminal and $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

step gpu 30 bash -c "nvidia-smi -L; $PYTHON -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no CUDA\")'"
step cuda-trial 100 "$PYTHON" bench/cuda_trial.py --epochs 6 --data-root data
step packed-paper-mnist 150 "$PYTHON" bench/cuda_trial.py --seeds 10 --epochs 4 --data-root data
step gpu-throughput 300 "$PYTHON" bench/gpu_throughput.py

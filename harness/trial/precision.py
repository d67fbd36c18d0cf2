"""training.precision: fp32, or the networks' forward under autocast (bf16; fp16 with loss scaling).

One `Precision` per run, shared by the single-run trainer (harness.trial.single) and packed seeds
(harness.trial.packed):

    precision = Precision(config.training.precision, device)
    with precision.autocast():
        loss = -model.loss_terms(x)["elbo"].mean()
    precision.step(loss, optimiser)          # zero_grad, backward, step (fp16: scaled)

What runs in low precision: the encoder's and decoder's layers (autocast casts matmuls and convolutions;
the weights, gradients and Adam's state stay float32). What does not: MFCVAE.loss_terms casts the
encoder's means and log-variances and the decoder's output to float32 and runs the likelihood, the
KL terms and the prior (models.elbo, models.priors, models.likelihoods) with autocast off. The
data-dependent init, the GMM prior initialisation and every evaluation run in fp32 as well, so the
metrics of a bf16 run are those of its trained weights at full precision.

fp16 needs CUDA (a CPU has no fast fp16 matmul: refused, by config validation where training.device
is cpu and before anything is written where `auto` resolves to the CPU). Its GradScaler's state is
checkpointed (`grad_scaler`) and restored on resume. Packed seeds share one scaler: a step in which
any seed's gradients overflow is skipped for every seed of the pack, and the scale is the pack's.
So that one diverging seed cannot drive the shared scale to 0, an fp16 pack checks each seed's
loss every step and drops a seed whose loss is non-finite at once (harness.trial.packed); a seed with
finite loss but overflowing gradients still skips the step for all.

bf16 on a CPU runs, but only CPUs with bf16 instructions (avx512_bf16 or AMX on x86, BF16 on Arm)
gain from it. Measured (torch 2.14, 1 thread, bare training steps: fwd+bwd+Adam; best of 3): on an
AMD EPYC (Zen 4) with avx512_bf16, bf16 took 1.00x fp32's time on the demo's digits model (shared
MLP 256-256, batch 128) and 0.50x on the paper's MNIST FC ladder (batch 512); the same CPU restricted
to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) took 4.4x and 10.8x fp32's time. So bf16 on a CPU without bf16 instructions warns (BF16_CPU_SLOWDOWN).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from harness.trial.config import PRECISIONS, ConfigError, fp16_on_cpu_message

__all__ = ["PRECISIONS", "Precision", "PrecisionError", "check_precision", "cpu_has_bf16_instructions",
           "refuse_before_writing"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CPU_SLOWDOWN = "4x (small models) to 11x (the MNIST FC ladder)"  # measured: see the module's docstring


class PrecisionError(ConfigError):
    """A precision the device cannot run (fp16 on a CPU); a ConfigError, so `mfcbench` exits 2 with it."""


@lru_cache(maxsize=None)
def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU has native bf16 arithmetic: AVX512-BF16 or AMX on x86, BF16 on Arm."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None:
            try:
                if check():
                    return True
            except Exception:  # a private probe that fails: fall back to the flags
                pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_cpu_warning() -> str:
    return (f"training.precision bf16 on a CPU without bf16 instructions (no avx512_bf16/amx_bf16): autocast "
            f"emulates bf16, and training takes {BF16_CPU_SLOWDOWN} fp32's time (measured on an AVX2 CPU); "
            "use fp32 on this CPU")


def check_precision(precision: str, device: torch.device, requested: Optional[str] = None) -> None:
    """Refuse what `device` cannot run (PrecisionError: fp16 on a CPU); warn (RuntimeWarning) for bf16
    on a CPU without bf16 instructions. `requested`: training.device as configured (auto), for the message."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"training.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cpu" and precision == "fp16":
        raise PrecisionError(fp16_on_cpu_message(requested or str(device)))
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16_instructions():
        warnings.warn(bf16_cpu_warning(), RuntimeWarning, stacklevel=3)
    if device.type == "cuda" and precision == "bf16" and not gpu_has_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise PrecisionError(f"training.precision: bf16 needs a GPU with bf16 arithmetic (compute capability 8.0 or "
                             f"later: A100, H100, RTX 30xx and newer); {torch.cuda.get_device_name(device)} has "
                             f"{major}.{minor}: allowed there fp32 or fp16")


def gpu_has_bf16(device: torch.device) -> bool:
    """Whether the CUDA device computes in bf16 natively (compute capability 8.0+)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def refuse_before_writing(precision: str, requested_device: str) -> None:
    """PrecisionError where training.device (auto, cpu, cuda[:N]) cannot run `precision`: fp16 on the
    CPU, bf16 on a GPU older than compute capability 8.0. Called before a run writes its first file.
    Config validation refuses fp16 with training.device cpu already; this catches auto on a machine
    without CUDA, and the GPU's capability, which only this machine knows."""
    on_cpu = requested_device == "cpu" or (requested_device == "auto" and not torch.cuda.is_available())
    if precision == "fp16" and on_cpu:
        raise PrecisionError(fp16_on_cpu_message(requested_device))
    if precision == "bf16" and not on_cpu and torch.cuda.is_available():
        device = torch.device("cuda" if requested_device == "auto" else requested_device)
        if (device.index or 0) < torch.cuda.device_count():  # a missing GPU fails in the run, with its record
            check_precision(precision, device)


class Precision:
    """Autocast and (fp16) loss scaling of one run on `device`."""

    def __init__(self, precision: str, device: torch.device | str, requested: Optional[str] = None):
        device = torch.device(device)
        check_precision(precision, device, requested)
        self.name, self.device = precision, device
        self.dtype: Optional[torch.dtype] = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self):
        """The context the networks' forward runs in: autocast to bf16/fp16, or nothing for fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimiser: torch.optim.Optimizer) -> None:
        """One optimiser step on `loss`: zero_grad, backward, step; under fp16 the loss is scaled, a
        step whose gradients hold inf/NaN is skipped and the scale adapts (torch.amp.GradScaler)."""
        optimiser.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimiser.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimiser)
        self.scaler.update()

    def state_dict(self) -> Optional[dict]:
        """The GradScaler's state (checkpoint key `grad_scaler`), None without one."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

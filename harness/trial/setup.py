"""What a run trains and evaluates, built the same way for a single run and for each packed seed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from harness.data import Dataset, load_dataset
from harness.trial.config import TrialConfig, batches_per_epoch
from harness.trial.errors import TrialFailed
from harness.trial.precision import Precision
from harness.trial.schedule import Schedule
from models import ClusteringBaseline, build_model
from models.pretrain import PretrainingDiverged


@dataclass
class Setup:
    """What a trial trains and evaluates, built before the first file of the run is written."""

    device: torch.device
    data: Dataset
    model: object
    likelihood: Optional[str]  # the likelihood's name, None for baselines
    optimiser: Optional[torch.optim.Optimizer] = None
    generator: Optional[torch.Generator] = None  # the data order
    schedule: Optional[Schedule] = None
    precision: Optional[Precision] = None  # autocast and fp16 loss scaling of training steps

    @property
    def trains(self) -> bool:
        return self.optimiser is not None

    def prepare(self, seed: int, batch_size: int, lr: float, log: Callable[[str], None]) -> None:
        """The model's init, pretraining and GMM prior init (`model.prepare`); pretraining whose loss
        goes non-finite fails the trial with what to change, not with the GMM's NaN error."""
        try:
            self.model.prepare(self.data.x_train, seed, batch_size, lr, log=log)
        except PretrainingDiverged as error:
            raise TrialFailed(f"{error}; try a lower training.lr or fewer model.pretrain_epochs") from None


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrialFailed(f"training.device={requested!r} but CUDA is not available here; use auto or cpu")
    return torch.device(requested)


def set_up(config: TrialConfig, name: str, log: Callable[[str], None], data: Optional[Dataset] = None) -> Setup:
    """Device, data, model (seeded by training.seed), optimiser, data-order generator, schedule.

    `data` already loaded onto the device is used as it is (a packed trial loads it once for all
    its seeds); loading draws nothing from torch's global RNG, so the model is built from the same
    RNG state either way."""
    tc = config.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = choose_device(tc.device)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2 ** 32)
    if data is None:
        ds = config.dataset
        data = load_dataset(ds.name, ds.data_root, ds.download, ds.split_seed, ds.validation_fraction,
                            ds.train_images).to(device)
    model = build_model(config.model, data.image_shape, data.likelihood)
    log(f"trial {name}: {config.model.name}/{config.model.architecture} on {data.name} "
        f"({data.describe()}), seed {tc.seed}, device {device}")
    likelihood = getattr(getattr(model, "likelihood", None), "name", None)
    if isinstance(model, ClusteringBaseline):
        return Setup(device, data, model, likelihood)
    model = model.to(device)
    return Setup(device, data, model, likelihood, torch.optim.Adam(model.parameters(), lr=tc.lr),
                 torch.Generator().manual_seed(tc.seed),  # on the CPU, moved per epoch
                 Schedule(model.n_facets, tc.epochs_per_step, tc.progressive, tc.fade_in_batches,
                          batches_per_epoch(len(data.x_train), tc.batch_size)),
                 Precision(tc.precision, device, tc.device))

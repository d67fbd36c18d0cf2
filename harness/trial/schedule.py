"""Progressive training's schedule (appendix D.3): which facets train, and how far faded in, per batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Schedule:
    """Progressive training (appendix D.3): which facets are on, and how far faded in, per batch."""

    n_facets: int
    epochs_per_step: list[int]
    progressive: bool
    fade_in_batches: Optional[int]  # None: half of the batches of the step that loops the facet in
    batches_per_epoch: int

    def step_of(self, epoch: int) -> tuple[int, int]:
        """(progressive step s >= 1, epoch within step from 0) of a 0-based global epoch."""
        if not self.progressive:
            return 1, epoch
        for s, n in enumerate(self.epochs_per_step, start=1):
            if epoch < n:
                return s, epoch
            epoch -= n
        raise ValueError("epoch beyond schedule")

    def alphas(self, epoch: int, batch: int) -> list[float]:
        """alpha_j for facets 1..J, eq. (90)-(92): facets J-s+2..J on, facet J-s+1 fading in, rest off."""
        if not self.progressive:
            return [1.0] * self.n_facets
        s, epoch_in_step = self.step_of(epoch)
        newest = self.n_facets - s  # 0-based index of the facet looped in at step s
        done = epoch_in_step * self.batches_per_epoch + batch + 1
        fade = self.fade_in_batches
        if fade is None:
            fade = max(1, self.epochs_per_step[s - 1] * self.batches_per_epoch // 2)
        ramp = 1.0 if s == 1 or fade == 0 else min(1.0, done / fade)
        return [0.0 if j < newest else ramp if j == newest else 1.0 for j in range(self.n_facets)]

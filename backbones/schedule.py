"""Learning-rate schedules by iteration: the paper's step and plateau schedules, cosine, and warm-up.

Warm-up is either a fixed number of iterations at ``warmup_lr`` or, like the paper's ResNet-110
(§4.2), "until the training error drops below ``warmup_until_error``" (then the normal schedule
takes over). Every schedule has ``state_dict`` / ``load_state_dict`` for exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES = ("step", "cosine", "plateau")


@dataclass
class LRSchedule:
    base_lr: float
    kind: str = "step"
    max_iters: int = 1
    milestones: Sequence[int] = ()  # step: iterations where lr is multiplied by gamma
    gamma: float = 0.1
    patience: int = 3  # plateau: evaluations without improvement before dividing by 1/gamma
    threshold: float = 1e-3  # plateau: relative improvement that counts
    min_lr: float = 0.0
    warmup_iters: int = 0
    warmup_lr: float | None = None
    warmup_until_error: float | None = None  # e.g. 0.8: warm up until training error < 80 %
    warmup_max_iters: int = 5000  # safety bound for the error-driven warm-up
    # state
    plateau_scale: float = field(default=1.0)
    best_metric: float = field(default=math.inf)
    bad_evals: int = field(default=0)
    warmup_done_at: int | None = field(default=None)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")
        if self.base_lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.base_lr}")
        self.milestones = sorted(int(m) for m in self.milestones)

    def in_warmup(self, iteration: int) -> bool:
        if self.warmup_until_error is not None:
            return self.warmup_done_at is None and iteration < self.warmup_max_iters
        return iteration < self.warmup_iters

    def lr(self, iteration: int) -> float:
        if self.in_warmup(iteration):
            return self.warmup_lr if self.warmup_lr is not None else self.base_lr * (iteration + 1) / self.warmup_iters
        if self.kind == "step":
            return self.base_lr * self.gamma ** sum(iteration >= m for m in self.milestones)
        if self.kind == "cosine":
            start = self.warmup_iters if self.warmup_until_error is None else (self.warmup_done_at or 0)
            progress = min(1.0, (iteration - start) / max(1, self.max_iters - start))
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return max(self.min_lr, self.base_lr * self.plateau_scale)

    def observe_train_error(self, iteration: int, error: float) -> None:
        """Called with the running training error; ends an error-driven warm-up."""
        if self.warmup_until_error is not None and self.warmup_done_at is None and error < self.warmup_until_error:
            self.warmup_done_at = iteration

    def observe_validation(self, metric: float) -> None:
        """Called after each evaluation with a lower-is-better metric (plateau schedule)."""
        if self.kind != "plateau":
            return
        if metric < self.best_metric * (1 - self.threshold):
            self.best_metric, self.bad_evals = metric, 0
        else:
            self.bad_evals += 1
            if self.bad_evals > self.patience:
                self.plateau_scale *= self.gamma
                self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        state["milestones"] = list(self.milestones)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the evolving state; the configuration stays as constructed."""
        for key in ("plateau_scale", "best_metric", "bad_evals", "warmup_done_at"):
            setattr(self, key, state[key])

"""How long will it take? Time the first optimizer steps of a call and predict the epoch and the run, so a
user on a slow machine knows within seconds whether to wait, shorten the run or move to a GPU."""
from __future__ import annotations

import time
from typing import Callable, Optional

__all__ = ["StepForecast", "format_duration"]


def format_duration(seconds: float) -> str:
    """45 s, 12.5 min, 3.2 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class StepForecast:
    """Call `step()` after every optimizer step of an epoch. The first `warmup` steps are not timed (lazy
    initialisation, kernel compilation); once `steps` more are done, `report` gets one line: seconds per
    step, the predicted training time of this epoch (`epoch_steps` steps), and of what the call still has
    to train (`call_steps` steps, e.g. the remaining epochs or --max-steps; `epochs` None when --max-steps, not
    the epoch count, ends the call). Evaluation is not included."""

    def __init__(self, *, epoch: int, epochs: Optional[int], epoch_steps: int, call_steps: int,
                 report: Callable[[str], None],
                 warmup: int = 1, steps: int = 3, clock: Callable[[], float] = time.perf_counter):
        self.epoch, self.epochs, self.epoch_steps, self.call_steps = epoch, epochs, epoch_steps, call_steps
        self.report, self.warmup, self.steps, self.clock = report, warmup, steps, clock
        self.done, self.t0 = 0, (clock() if warmup == 0 else None)
        self.line: Optional[str] = None

    def step(self) -> None:
        if self.line is not None:
            return
        self.done += 1
        if self.done == self.warmup:
            self.t0 = self.clock()
        elif self.done == self.warmup + self.steps and self.t0 is not None:
            per_step = (self.clock() - self.t0) / self.steps
            head = f"timed {self.steps} steps: {per_step:.3g} s/step; "
            if self.call_steps < self.epoch_steps:  # e.g. --max-steps ends the call inside this epoch
                self.line = head + (f"the {self.call_steps} steps of this call should take about "
                                    f"{format_duration(per_step * self.call_steps)} plus the evaluation")
            else:
                of = f"/{self.epochs}" if self.epochs else ""
                self.line = head + (f"epoch {self.epoch}{of} ({self.epoch_steps} steps) should take about "
                                    f"{format_duration(per_step * self.epoch_steps)} plus its evaluation")
                if self.call_steps > self.epoch_steps:
                    which = "still to train" if self.epochs else "of this call"
                    self.line += (f"; all {self.call_steps} steps {which} about "
                                  f"{format_duration(per_step * self.call_steps)}")
            self.report(self.line)

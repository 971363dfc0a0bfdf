"""How a sustained run walks its offered rates, and how it judges each step.

Pure decisions with nothing to talk to, kept apart from the workloads that run the
steps so that the suite's verdicts (the README's figures come from them) are unit tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A sustained step counts as run at its offered rate only when the writers committed at
# least this share of it (open-loop writers on pace land within ~1.5 %); below, the step
# is writer-limited and its figure is what they did commit. At 0.9 a step offering the
# 20,000 target while the writers managed 18,500 would have read as 20,000 kept up.
WRITERS_ON_PACE = 0.98
# A step the relay kept up with but the writers fell short of is offered once more: a
# writers' dip (their share at 20,000 varies by a few %) otherwise ends the run there,
# and the run's figure swings with it. Once per run, to bound the run's length.
WRITER_LIMITED_RETRIES = 1


@dataclass
class StepResult:
    rate: float
    achieved_write_rate: float
    relay_rate: float
    backlog_slope: float
    backlog_end: int
    cpu_us_per_msg: float | None
    rss_mb: float
    kept_up: bool
    writer_limited: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in vars(self).items()}

    @property
    def reached(self) -> float:
        """The rate the step ran at: the offered one, or what writers short of it committed."""
        return self.achieved_write_rate if self.writer_limited else self.rate


def step_verdict(
    rate: float, write_rate: float, backlog_end: int, slope: float
) -> tuple[bool, bool]:
    """(the relay kept up, the writers fell short of the offered rate) for one step.

    Kept up: the backlog ends small and is not clearly growing (a short step's slope is
    noisy, so a backlog that ends below a quarter second of writes counts as flat
    whatever the slope).
    """
    small = max(rate * 0.25, 500)
    flat = slope <= 0.05 * rate or backlog_end <= small
    kept_up = backlog_end <= max(rate * 0.5, 1000) and flat
    return kept_up, write_rate < WRITERS_ON_PACE * rate


def bisect_rate(passed: float, failed: float) -> list[float]:
    """The rate halfway between, to 100 msg/s; none when that is one already tried
    (8,000 kept and 8,100 not: the half rounds back to 8,000)."""
    half = round((passed + failed) / 2, -2)
    return [half] if passed < half < failed else []


@dataclass
class Ramp:
    """The rates still to offer, and what the steps so far have shown.

    ``passed`` is the highest rate the relay kept up with (for a writer-limited step, the
    rate the writers did commit: a lower bound of the relay's); ``failed`` the lowest at
    which it fell behind, counted at the rate the writers reached, not the one offered,
    and never below ``passed``.
    """

    queue: list[float]
    bisect: int
    retries: int = WRITER_LIMITED_RETRIES
    passed: float = 0.0
    failed: float | None = None
    steps: list[StepResult] = field(default_factory=list)

    def next_rate(self) -> float | None:
        return self.queue.pop(0) if self.queue else None

    def record(self, step: StepResult) -> None:
        self.steps.append(step)
        if step.kept_up:
            self.passed = max(self.passed, step.reached)
            if step.writer_limited:
                self._writers_fell_short(step.rate)
        else:
            # Never below a rate kept up with: writers that reached less than that while
            # the relay fell behind say the relay failed at about that rate, not lower.
            failed_at = max(step.reached, self.passed)
            self.failed = failed_at if self.failed is None else min(self.failed, failed_at)
            self.queue = []
        if not self.queue and self.failed is not None and self.bisect > 0:
            self.bisect -= 1
            self.queue = bisect_rate(self.passed, self.failed)

    def _writers_fell_short(self, rate: float) -> None:
        # Offering more would not raise the figure while the writers cannot reach this
        # rate; offering it again can, when their shortfall was a dip.
        if self.retries > 0:
            self.retries -= 1
            self.queue.insert(0, rate)
        else:
            self.queue, self.bisect = [], 0  # nor would bisecting above what they reached

    def best(self) -> StepResult | None:
        """The step the run's figure comes from."""
        return next((s for s in self.steps if s.kept_up and s.reached == self.passed), None)

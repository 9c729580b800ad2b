"""The training progress bar, telling the truth under a time budget.

Without a budget the bar counts steps. With one (``--time-budget``, every quick preset) a run
ends when ``max(step / steps, elapsed / budget)`` reaches 1, usually on time long before the step
cap: a bar over 10,000 steps would show an ETA of minutes after the run ended. So the bar then
runs over the budget's seconds, filled to that same fraction, and shows the step count beside
the loss; its ETA is the time left in the budget.
"""

from __future__ import annotations

from tqdm import tqdm


class TrainBar:
    def __init__(self, steps: int, budget_s: float, initial_progress: float = 0.0, initial_step: int = 0):
        self.budget = float(budget_s or 0.0)
        self.step = initial_step
        self._postfix: dict = {}
        if self.budget:
            total = round(self.budget)
            self.bar = tqdm(
                total=total,
                initial=min(total, round(initial_progress * total)),
                desc="train",
                unit="s",
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} s of the time budget "
                "[{elapsed}<{remaining}{postfix}]",
            )
        else:
            self.bar = tqdm(total=steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True)

    def advance(self, step: int, progress: float) -> None:
        """One step done; ``progress`` is the trainer's fraction done (steps or budget, whichever leads)."""
        self.step = step
        if not self.budget:
            self.bar.update(1)
            return
        n = min(self.bar.total, progress * self.bar.total)
        if n - self.bar.n >= 0.5 or n >= self.bar.total:
            self.bar.update(n - self.bar.n)

    def set_postfix(self, **kw) -> None:
        self._postfix = kw
        self.bar.set_postfix(**({"step": f"{self.step:,}"} if self.budget else {}), **kw)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()

"""Progress for loading and downloading: a tqdm bar on a terminal, a plain line per quarter elsewhere
(a redrawn bar in a log file or a pipe is one long line of carriage returns)."""
from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm


class Progress(tqdm):
    """tqdm, or, when stderr is not a terminal, one line at 0%, 25%, 50%, 75% and 100%."""

    def __init__(self, *args, **kwargs):
        self._plain = not sys.stderr.isatty()
        self._quarter = -1
        kwargs["file"] = _Discard() if self._plain else sys.stderr  # plain lines are printed by display()
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self._plain:
            return super().display(msg, pos)
        if not self.total:
            return True
        quarter = min(4, int(4 * self.n / self.total))
        if quarter > self._quarter:
            self._quarter = quarter
            size = f" ({self.format_sizeof(self.n)}B of {self.format_sizeof(self.total)}B)" if self.unit == "B" else ""
            print(f"{self.desc}: {25 * quarter:3d}%{size}", file=sys.stderr, flush=True)
        return True

    def update(self, n=1):
        out = super().update(n)
        if self._plain:
            self.display()  # tqdm redraws by time; a plain line must not miss its quarter
        return out


class _Discard:
    def write(self, text):
        pass

    def flush(self):
        pass


def load_progress(name: str) -> Callable[[float], None]:
    """A load-progress callback (fraction done) drawing a bar of tensor-loading percent."""
    bar: list[Progress] = []

    def show(fraction: float) -> None:
        if not bar:
            bar.append(Progress(total=100, desc=f"loading {name}", unit="%"))
        step = int(fraction * 100)
        if step > bar[0].n:
            bar[0].update(step - bar[0].n)
        if fraction >= 1:
            bar[0].close()

    return show

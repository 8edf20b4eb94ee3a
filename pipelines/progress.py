"""Progress of a phase: a bar on a terminal, a plain line every few seconds elsewhere
(CI logs, Airflow task logs, files)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, desc: str, total: int, enabled: bool = True, unit: str = "task", interval: float = 10.0):
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = enabled and total > 0
        self.done = 0
        self.docs = 0
        self.start = time.monotonic()
        self._last = self.start
        self._interval = interval
        self._bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, docs: int = 0) -> None:
        self.done += n
        self.docs += docs
        if not self.enabled:
            return
        rate = self.docs / max(time.monotonic() - self.start, 1e-9)
        if self._bar is not None:
            self._bar.update(n)
            if self.docs:
                self._bar.set_postfix_str(f"{rate:,.0f} docs/s", refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self._interval or self.done == self.total:
            self._last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            docs = f", {self.docs:,} docs, {rate:,.0f} docs/s" if self.docs else ""
            print(f"[{self.desc}] {self.done}/{self.total} {self.unit}s{docs}, elapsed {elapsed:,.1f}s, ETA {eta:,.1f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

"""Progress reporting: a tqdm bar on a terminal, a log line every ``interval`` seconds otherwise
(cluster logs stay readable)."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ld3")


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
                 interval: float = 15.0):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.enabled, self.interval = enabled, interval
        self.bar = None
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.start_n = self.n
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            log.info("%s", self._line())

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def _line(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.n - self.start_n) / dt
        tail = f" [{self.postfix}]" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s){tail}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n > self.start_n and time.monotonic() - self.t0 > 2.0:
            log.info("%s", self._line())
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

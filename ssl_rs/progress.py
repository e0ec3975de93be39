"""Progress of long work, shown on stderr by one rule for every command.

On a terminal, a live tqdm bar. Anywhere else (a log file, a pipe, a scheduler's output) a bar
would leave ``\\r`` frames in the file, so a plain line is printed instead, at most once every
``SSL_RS_PROGRESS_SECONDS`` (default 30) seconds, plus a closing line if any was printed: work
that ends sooner leaves the log untouched. stdout is never used, so it carries only results.

Bottom layer: this module imports nothing from ssl_rs, so any layer may use it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")

#: environment variable: seconds between plain progress lines off a terminal
INTERVAL_ENV = "SSL_RS_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 30.0


def on_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal, where a live bar may redraw itself."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def line_interval() -> float:
    """Seconds between plain lines: ``$SSL_RS_PROGRESS_SECONDS`` when it is a number >= 0, else 30."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """``7s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """``done`` of ``total`` units of work, shown by the module's rule.

    ``with Progress(total, "features", "batch") as p: ... p.update()``. ``enabled=False`` shows
    nothing (a caller that prints its own progress); ``initial`` counts work done before (a
    resumed training); ``note`` is extra text after the count (``epoch 3/10, loss 1.23``).
    ``unit="B"`` counts bytes, shown as KiB / MiB / GiB (a download)."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", *, enabled: bool = True,
                 initial: int = 0, stream: Optional[TextIO] = None, interval: Optional[float] = None,
                 leave: bool = False) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = initial
        self.note = ""
        # looked up now, not at import: a redirected or captured stderr is the one written to
        self.stream = sys.stderr if stream is None else stream
        self.interval = line_interval() if interval is None else interval
        self._bar: Any = None
        self._lines = False
        self._printed = False
        self._start = self._last = time.monotonic()
        self._initial = initial
        if not enabled:
            return
        if on_terminal(self.stream):
            from tqdm import tqdm

            scaled = dict(unit_scale=True, unit_divisor=1024) if unit == "B" else {}
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream, leave=leave,
                             dynamic_ncols=True, **scaled)
        else:
            self._lines = True

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and not (self.total and self.done >= self.total):  # the end is close()'s line
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._print_line(now)

    def set_note(self, note: str) -> None:
        """Text shown after the count (the bar's postfix; the next plain line)."""
        self.note = note
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)

    def close(self, stopped: bool = False) -> None:
        """End the display; ``stopped``: the work ended early (an error, an interrupt)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines and self._printed:  # a log that saw the work going also sees it end
            self._print_line(time.monotonic(), final="stopped after" if stopped else "done in")
        self._lines = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close(stopped=kind is not None)

    def _print_line(self, now: float, final: Optional[str] = None) -> None:
        elapsed = now - self._start
        if self.unit == "B":
            count = f"{_bytes(self.done)}/{_bytes(self.total)}" if self.total else _bytes(self.done)
            text = f"ssl-rs: {self.desc}: {count}"
        else:
            count = f"{self.done}/{self.total}" if self.total else str(self.done)
            # "7/30 steps" reads "7 of 30 steps": the noun agrees with the total, or the count without one
            text = f"ssl-rs: {self.desc}: {count} {plural(self.unit, self.total or self.done)}"
        if self.total:
            text += f" ({100.0 * self.done / self.total:.0f}%)"
        if self.note:
            text += f", {self.note}"
        if final:
            text += f", {final} {format_duration(elapsed)}"
        else:
            text += f", {format_duration(elapsed)} elapsed"
            done_now = self.done - self._initial
            if self.total and done_now > 0 and self.done < self.total:
                text += f", ~{format_duration(elapsed / done_now * (self.total - self.done))} left"
        print(text, file=self.stream, flush=True)
        self._printed = True


#: units shown as they are whatever the count: abbreviations (tqdm's default ``it``, bytes)
INVARIANT_UNITS = ("it", "img", "B")


def plural(unit: str, count: int) -> str:
    """``unit`` as a count of ``count`` reads: ``1 step``, ``30 steps``, ``6 batches``; an
    abbreviation (:data:`INVARIANT_UNITS`) stays as it is."""
    if count == 1 or unit in INVARIANT_UNITS:
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def progress(iterable: Iterable[T], desc: str, unit: str = "it", *, total: Optional[int] = None,
             enabled: bool = True, **kwargs: Any) -> Iterator[T]:
    """Iterate over ``iterable``, showing its progress (``total`` defaults to its ``len``)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:  # no length (an iterable dataset's loader): a count without a total
            total = None
    with Progress(total, desc, unit, enabled=enabled, **kwargs) as p:
        for item in iterable:
            yield item
            p.update(1)

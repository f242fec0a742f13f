"""Progress bars for :meth:`Client.wait`: tqdm's when it is installed (a widget in Jupyter
with ipywidgets), else a one-line text bar on stderr redrawn with ``\\r``."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Bar(Protocol):
    """A bar from 0 to 100 percent with a short status text beside it."""

    def update(self, percent: float, status: str) -> None:
        """Shows ``percent`` done and ``status``."""

    def close(self) -> None:
        """Ends the bar (a last redraw and a newline)."""


def _tqdm_class() -> Any | None:
    """tqdm's auto bar (notebook widget or terminal) if tqdm is installed, else ``None``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class TqdmBar:
    """A tqdm bar counting percent."""

    def __init__(self, tqdm: Any, desc: str) -> None:
        self._bar = tqdm(
            total=100,
            desc=desc,
            bar_format="{l_bar}{bar}| {elapsed}{postfix}",
            leave=True,
        )

    def update(self, percent: float, status: str) -> None:
        self._bar.n = round(min(max(percent, 0.0), 100.0), 1)
        self._bar.set_postfix_str(status, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class PlainBar:
    """``desc [#######.............]  35% running`` on stderr, redrawn in place."""

    WIDTH = 30

    def __init__(self, desc: str) -> None:
        self._desc = desc
        self._last = ""

    def update(self, percent: float, status: str) -> None:
        percent = min(max(percent, 0.0), 100.0)
        filled = int(self.WIDTH * percent / 100)
        line = (
            f"{self._desc} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3.0f}% {status}"
        )
        if line != self._last:
            # pad so that a shorter line covers the end of the longer one before it
            pad = " " * max(0, len(self._last) - len(line))
            sys.stderr.write("\r" + line + pad)
            sys.stderr.flush()
            self._last = line

    def close(self) -> None:
        if self._last:
            sys.stderr.write("\n")
            sys.stderr.flush()


class NoBar:
    """Shows nothing (``progress=False``)."""

    def update(self, percent: float, status: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_bar(desc: str, show: bool) -> Bar:
    """The best bar available, or none when ``show`` is false."""
    if not show:
        return NoBar()
    tqdm = _tqdm_class()
    return TqdmBar(tqdm, desc) if tqdm is not None else PlainBar(desc)

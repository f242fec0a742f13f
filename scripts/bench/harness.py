"""What every section of the performance suite shares: alternating repetitions of the sides
being compared, their median / min / max, the machine they ran on, the table printed, and the
BENCHMARKS.md section written between its markers.

A section is a module of this package with a ``run(ctx: Context) -> Section`` function; see
``run.py`` for the list and the order.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")


def binary() -> str:
    """The release build of `modalbench` (`make bench` builds it first)."""
    path = target_dir() / "release" / "modalbench"
    if not path.exists():
        sys.exit(f"no release build at {path}: run `cargo build --release` (or `make bench`)")
    return str(path)


@dataclasses.dataclass
class Stats:
    """Several repetitions of one measurement (bigger is better unless the unit says so)."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def fmt(self, digits: int = 1) -> str:
        """``median (min–max)``."""
        return f"{self.median:,.{digits}f} ({self.min:,.{digits}f}–{self.max:,.{digits}f})"


def alternate(sides: dict[str, Callable[[], float]], reps: int, warmup: int = 0,
              log: Callable[[str], None] | None = None) -> dict[str, Stats]:
    """Runs each side once per round, in turn, ``reps`` rounds (after ``warmup`` untimed rounds),
    so that both see the same machine: the load of other processes, the CPU's clock and the page
    cache drift between rounds, not between sides. Each callable returns its figure."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(warmup + reps):
        for name, f in sides.items():
            v = f()
            if r >= warmup:
                out[name].append(v)
            if log:
                log(f"  {'warm-up' if r < warmup else f'round {r - warmup + 1}/{reps}'}: {name} {v:,.2f}")
    return {name: Stats(vs) for name, vs in out.items()}


def ratio(a: Stats, b: Stats) -> Stats:
    """Round-by-round ratios a/b (the sides of one round ran next to each other)."""
    return Stats([x / y for x, y in zip(a.values, b.values, strict=True) if y])


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
        cwd: Path | None = None) -> str:
    """Runs a command, returns its stdout; its stderr passes through; fails loudly."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=timeout,
                       cwd=cwd or ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` exited with {p.returncode}:\n{p.stdout[-2000:]}")
    return p.stdout


def figure(text: str, name: str) -> float:
    """The number printed as ``name=<number>`` (the machine-readable lines the bench commands
    print beside their prose)."""
    m = re.search(rf"(?m)^{re.escape(name)}=([-+0-9.eE]+|nan|inf)\s*$", text)
    if not m:
        raise RuntimeError(f"no `{name}=` line in:\n{text[-2000:]}")
    return float(m.group(1))


def machine() -> str:
    """The machine in one line: CPU model and flags that matter, cores, memory, PyTorch."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no AVX2"
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    torch = subprocess.run([PYTHON, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True).stdout.strip() or "?"
    return (f"{model} ({isa}), {os.cpu_count()} cores{mem}, {platform.system()} "
            f"{platform.machine()}, PyTorch {torch}")


@dataclasses.dataclass
class Row:
    cells: list[str]


@dataclasses.dataclass
class Section:
    """One section of BENCHMARKS.md: its title, the commands that produced it, a table and the
    prose around it (what the figures mean, which target holds)."""

    key: str
    title: str
    commands: list[str]
    header: list[str]
    rows: list[list[str]]
    notes: str = ""
    targets: list[tuple[str, bool | None, str]] = dataclasses.field(default_factory=list)
    """(target, held?, the figure): None when it could not be measured here."""

    def markdown(self, machine: str, date: str) -> str:
        out = [f"## {self.title}", "", "```sh", *self.commands, "```", "",
               f"Measured {date} on {machine}.", ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append("| " + " | ".join("---" for _ in self.header) + " |")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.targets:
            out += ["", "| target | held | measured |", "| --- | --- | --- |"]
            for target, held, fig in self.targets:
                mark = {True: "yes", False: "**no**", None: "not measured"}[held]
                out.append(f"| {target} | {mark} | {fig} |")
        if self.notes:
            out += ["", self.notes.strip()]
        return "\n".join(out) + "\n"

    def text(self) -> str:
        widths = [max(len(c) for c in col) for col in zip(self.header, *self.rows, strict=True)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
        out = [f"== {self.title}", line(self.header), *(line(r) for r in self.rows)]
        for target, held, fig in self.targets:
            mark = {True: "HELD", False: "MISSED", None: "n/a"}[held]
            out.append(f"   target {target}: {mark} ({fig})")
        return "\n".join(out)


def write_section(markdown: str, key: str, path: Path = BENCHMARKS) -> None:
    """Replaces the text between ``<!-- bench:KEY -->`` and ``<!-- /bench:KEY -->`` in
    BENCHMARKS.md, or appends the section with its markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{markdown}{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        # a blank line before whatever follows, as between every section
        rest = after.lstrip("\n")
        text = before + block + ("\n" + rest if rest else "")
        if not text.endswith("\n"):
            text += "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


@dataclasses.dataclass
class Context:
    reps: int
    quick: bool
    """Fewer repetitions and smaller sizes: checks that the section runs, figures not for
    BENCHMARKS.md."""
    threads: int
    log: Callable[[str], None]

    @staticmethod
    def now() -> str:
        return time.strftime("%Y-%m-%d")

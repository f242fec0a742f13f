"""What the service sections share: a release `modalbench serve` on a data folder of its own
(its URL read from the line it prints), raw keep-alive HTTP clients that cost the Python side
little, and latency percentiles.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import harness

MODELS = harness.ROOT / "models"


def rss_of(pid: int) -> int:
    """Resident memory of process `pid` now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Server:
    """`modalbench serve --data-dir DATA` on a free loopback port; stop() ends it."""

    def __init__(self, data: Path, extra: list[str] | None = None,
                 env: dict[str, str] | None = None):
        cmd = [harness.binary(), "serve", "--addr", "127.0.0.1:0", "--data-dir", str(data),
               "--models-dir", str(MODELS), *(extra or [])]
        base = {k: v for k, v in os.environ.items() if k != "MODALBENCH_API_TOKEN"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env={**base, **(env or {})})
        line = self.proc.stdout.readline()
        m = re.search(r"http://([0-9.:]+)/", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.url = f"http://{m.group(1)}"
        self.pid = self.proc.pid

    def rss_bytes(self) -> int:
        """The server process's resident memory now."""
        return rss_of(self.pid)

    def children_rss_bytes(self) -> int:
        """Resident memory of the server's child processes (its workers) now."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                if int(text[text.rindex(")") + 1:].split()[1]) == self.pid:
                    total += rss_of(int(stat.parent.name))
            except (OSError, ValueError, RuntimeError):
                continue
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """One kept-alive connection; requests raise on a status >= 400."""

    # the service closes connections idle for 10 s: one idle for longer than this is opened
    # again before it is used
    MAX_IDLE = 5.0

    def __init__(self, url: str, timeout: float = 120):
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        self.used = time.monotonic()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> bytes:
        h = {"Content-Type": "application/json"} if body is not None else {}
        if time.monotonic() - self.used > self.MAX_IDLE:
            self.conn.close()
        self.conn.request(method, path, body=body, headers={**h, **(headers or {})})
        r = self.conn.getresponse()
        data = r.read()
        self.used = time.monotonic()
        if r.status >= 400:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return data

    def get(self, path: str) -> bytes:
        return self.request("GET", path)

    def post(self, path: str, doc) -> dict:
        return json.loads(self.request("POST", path, json.dumps(doc).encode()) or b"{}")

    def timed_get(self, path: str) -> tuple[float, int]:
        """Seconds for the whole answer, and its size in bytes."""
        t = time.perf_counter()
        n = len(self.get(path))
        return time.perf_counter() - t, n

    def close(self) -> None:
        self.conn.close()


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(d.name))
        cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += children.get(p, [])
    return total


def wait_quiet(pid: int, seconds: float, busy: float = 0.05) -> None:
    """Waits (at most `seconds`) until a process tree uses under `busy` CPU seconds a second,
    two seconds in a row: a server that has started its helper processes."""
    end, quiet, last = time.monotonic() + seconds, 0, tree_cpu_seconds(pid)
    while time.monotonic() < end and quiet < 2:
        time.sleep(1)
        now = tree_cpu_seconds(pid)
        quiet = quiet + 1 if now - last < busy else 0
        last = now


def wait_until(f, seconds: float, what: str) -> None:
    """Polls f() until it is true, at most `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if f():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")

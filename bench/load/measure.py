"""What every scenario measures: CPU time from /proc (the servers, the
generator, the whole machine and every other process), peak memory, and
delays as histograms.

CPU figures are utime+stime (every thread) sampled at both ends of the
measured window and reported in percent of one CPU, so that a process that
keeps one CPU busy shows 100 % whatever the machine's size.
"""

from __future__ import annotations

import os
import time
from array import array
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
monotonic_ns = time.monotonic_ns


def cpu_seconds(pid: int | str = "self") -> float:
    """utime+stime of a process (every thread of it), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def servers_cpu(pids: list[int]) -> float:
    """utime+stime of the server processes together (NaN without any)."""
    return sum(cpu_seconds(pid) for pid in pids) if pids else float("nan")


def servers_rss(pids: list[int]) -> float | None:
    """Sum of the server processes' peak resident memory, in MiB."""
    peaks = [peak_rss_mb(pid) for pid in pids]
    return None if not peaks or None in peaks else sum(peaks)


def peak_rss_mb(pid: int | None) -> float | None:
    """VmHWM (peak resident memory) of a process, in MiB."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb(pid: int | None) -> float | None:
    """VmRSS (resident memory now, not the peak) of a process, in MiB: the
    idle scenario's before/after figure."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def servers_rss_now(pids: list[int]) -> float | None:
    """Sum of the server processes' resident memory now, in MiB."""
    now = [rss_mb(pid) for pid in pids]
    return None if not now or None in now else sum(n for n in now if n is not None)


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, irq+softirq) clock ticks of the whole machine, all
    CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    return sum(v[:8]) - idle - steal, steal, v[5] + v[6]


def machine_pct(before: tuple[int, int, int], after: tuple[int, int, int], wall: float) -> dict:
    """Busy, stolen and interrupt CPU of the whole machine over ``wall``
    seconds, in percent of one CPU (like the per-process figures)."""
    return {
        "machine_cpu_pct": 100.0 * (after[0] - before[0]) / TICK / wall,
        "steal_pct": 100.0 * (after[1] - before[1]) / TICK / wall,
        "irq_cpu_pct": 100.0 * (after[2] - before[2]) / TICK / wall,
    }


def process_ticks() -> dict[int, tuple[str, int, bool]]:
    """pid -> (name, utime+stime ticks, is a kernel thread) for every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
        fields = raw.rsplit(b")", 1)[1].split()
        out[int(name)] = (
            comm,
            int(fields[11]) + int(fields[12]),
            bool(int(fields[6]) & 0x00200000),
        )
    return out


def other_load(before: dict, after: dict, ours: set[int], wall: float) -> dict:
    """CPU used during the window by processes that are neither the server
    nor the generator: user processes by name (postgres, other work on the
    machine) and kernel threads (ksoftirqd and friends) in total.  Processes
    that both started and ended inside the window are invisible here; the
    caller compares the sum with the machine's busy time to see them."""
    users: dict[str, float] = {}
    kernel = 0.0
    for pid, (comm, ticks, kthread) in after.items():
        if pid in ours:
            continue
        # A process that started inside the window spent all its time in it.
        used = 100.0 * (ticks - (before[pid][1] if pid in before else 0)) / TICK / wall
        if used <= 0:
            continue
        if kthread:
            kernel += used
        else:
            users[comm] = users.get(comm, 0.0) + used
    top = sorted(users.items(), key=lambda kv: -kv[1])[:4]
    return {
        "other_cpu_pct": sum(users.values()),
        "kernel_threads_cpu_pct": kernel,
        "other_top": {k: round(v, 1) for k, v in top if v >= 1.0},
    }


def own_pids(args: Any) -> set[int]:
    """The generator's processes, run.py and the servers: not 'other' load."""
    return {os.getpid(), os.getppid(), *args.server_pids, *args.worker_pids}


class CpuWindow:
    """CPU of the servers, of the generator and of every other process from
    construction to ``stop``, in % of one CPU.

    The wall time is the caller's (``t0`` to ``stop``): a scenario takes
    ``t0`` when its load starts, which need not be the instant the counters
    were read."""

    def __init__(self, server_pids: list[int], ours: set[int]) -> None:
        self.server_pids, self.ours = server_pids, ours
        self.server0 = servers_cpu(server_pids)
        self.own0 = cpu_seconds()
        self.mach0 = machine_ticks()
        self.procs0 = process_ticks()
        self.server_s = float("nan")

    def stop(self, t0: int, workers_cpu_s: float = 0.0) -> dict:
        """The figures from ``t0`` (monotonic_ns) to now; ``workers_cpu_s``
        is what the generator's workers measured of themselves meanwhile.
        The servers' CPU seconds stay in ``server_s`` for per-item figures."""
        self.server_s = servers_cpu(self.server_pids) - self.server0
        own = cpu_seconds() - self.own0
        mach1, procs1 = machine_ticks(), process_ticks()
        wall = max(1e-9, (monotonic_ns() - t0) / 1e9)
        return {
            "server_cpu_pct": 100.0 * self.server_s / wall,
            "generator_cpu_pct": 100.0 * (own + workers_cpu_s) / wall,
            **machine_pct(self.mach0, mach1, wall),
            **other_load(self.procs0, procs1, self.ours, wall),
            "cpu_sampled_s": wall,
        }


def histogram_add(hist: dict[int, int], delays_ns: array) -> None:
    """Quantize delays (ns) to microseconds with 3 significant digits, so a
    worker can send its delays to the parent as a small dict."""
    for d in delays_ns:
        us = d // 1000
        if us >= 1000:
            scale = 10 ** (len(str(us)) - 3)
            us = us // scale * scale
        hist[us] = hist.get(us, 0) + 1


def histogram(delays_ns: array) -> dict[int, int]:
    """A fresh histogram of ``delays_ns`` (see ``histogram_add``)."""
    hist: dict[int, int] = {}
    histogram_add(hist, delays_ns)
    return hist


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile of a histogram, in ms (None when it is empty)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > rank:
            return value / 1000.0  # ms
    return max(hist) / 1000.0


def latency(hist: dict[int, int], prefix: str = "") -> dict[str, float | None]:
    """p50, p99 and max of a histogram as ``{prefix}p50_ms`` … keys."""
    return {
        f"{prefix}p50_ms": percentile(hist, 0.50),
        f"{prefix}p99_ms": percentile(hist, 0.99),
        f"{prefix}max_ms": percentile(hist, 1.0),
    }


def merge_counts(counts: list[dict]) -> dict:
    """Add up dicts of counts key by key (histograms, close codes…)."""
    out: dict = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def steady_rate(arrivals: list[int], receivers: int) -> float | None:
    """Deliveries/s between the 10th and the 90th percent of the messages,
    as one receiver saw them (leaves out ramp-up and tail)."""
    if len(arrivals) < 20:
        return None
    lo, hi = len(arrivals) // 10, len(arrivals) * 9 // 10
    span = (arrivals[hi] - arrivals[lo]) / 1e9
    return (hi - lo) * receivers / span if span > 0 else None


def timeline(arrivals: list[int], t0: int, step: float = 0.5) -> list[int]:
    """Messages per second as one receiver saw them, per ``step`` seconds."""
    buckets: list[int] = []
    for a in arrivals:
        k = int((a - t0) / 1e9 / step)
        while len(buckets) <= k:
            buckets.append(0)
        buckets[k] += 1
    return [int(b / step) for b in buckets]

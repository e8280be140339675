"""The bench scripts still run: each is started small, and its table is read back.

They measure, so nothing here judges a figure; a script that no longer starts its
topology, or whose table lost a row, fails here rather than on the day someone needs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> list[str]:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def row(lines: list[str], name: str) -> list[str]:
    """The last table row that starts with ``name`` (the summary), split in cells."""
    rows = [line.split() for line in lines if line.split()[:1] == [name]]
    assert rows, f"no {name} row in:\n" + "\n".join(lines)
    return rows[-1]


def test_bench_gateway_runs_the_ratls_topology() -> None:
    lines = run_bench(
        "bench_gateway.py",
        *("--only", "raw,ratls", "--rounds", "1", "--mib", "4"),
        *("--tunnels", "6", "--idle", "6", "--latency", "2", "--streams", "2"),
    )
    for name in ("raw", "ratls"):
        cells = row(lines, name)
        assert float(cells[1]) > 0  # MB/s
        assert cells[4] == ")"
        assert float(cells[5]) > 0  # MB/s over several streams at once


def test_bench_udp_runs_both_paths() -> None:
    lines = run_bench("bench_udp.py", "--count", "200", "--flows", "2", "--pings", "5")
    for name in ("direct", "ratls"):
        cells = row(lines, name)
        assert float(cells[3]) > 0  # datagrams per second

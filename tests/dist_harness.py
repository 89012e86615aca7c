"""Start N ranks of a worker in tests/dist_workers.py as separate processes, the way torchrun does.

Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; rank 0 hosts the
rendezvous store. Separate processes (not torch.multiprocessing.spawn) so that one rank can die
while the test watches the others on their own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@dataclass
class RankResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(worker: str, world_size: int, *args: str, timeout: float = 120, env: dict | None = None
                 ) -> list[RankResult]:
    """Run `python tests/dist_workers.py WORKER ARGS` as ranks 0..world_size-1; wait for all of them."""
    port = str(free_port())
    procs = []
    start = time.monotonic()
    for rank in range(world_size):
        rank_env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PYTHONPATH": str(ROOT),
                    "OMP_NUM_THREADS": "1", **(env or {})}
        procs.append(subprocess.Popen([sys.executable, str(TESTS / "dist_workers.py"), worker, *args],
                                      env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for rank, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"{worker}: rank {rank} still running after {timeout} s") from None
        results.append(RankResult(rank, proc.returncode, out, err, time.monotonic() - start))
    return results


def check_all_ok(results: list[RankResult]) -> None:
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} exited {r.returncode}:\n{r.stderr[-3000:]}"

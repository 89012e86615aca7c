"""A rank that fails takes the job down with one line that names it.

Inside `rank_guard`, a rank that raises posts its one-line reason in the job's store (torchrun's
agent hosts it, so it outlives the worker) before exiting. The other ranks then find their next
collective broken (gloo: the peer's socket closes; NCCL: the watchdog times out after the process
group's timeout) and turn that into an RlvrError naming the failed rank and its reason; a rank
killed outright (SIGKILL, out of host memory) posts nothing, so the survivors hold a short roll
call in the store and name the ranks that did not answer. The CLI prints the line and exits 2.
"""

from __future__ import annotations

import contextlib
import time

import torch.distributed as dist

from rlvr.distributed.context import DistContext, default_store
from rlvr.errors import RlvrError

FAILED_KEY = "rlvr/failed/{rank}"
ALIVE_KEY = "rlvr/alive/{rank}"
ROLL_CALL_S = 5.0
# What torch's backends say when a peer is gone or a collective timed out (gloo raises a plain RuntimeError).
_COLLECTIVE_SIGNS = ("closed by peer", "connection reset", "timed out", "timeout", "gloo", "nccl", "broken pipe",
                     "c10d", "socket")


def is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _COLLECTIVE_SIGNS)


def report_failure(ctx: DistContext, reason: str) -> None:
    """Post this rank's reason for failing (best effort: the store may be gone too)."""
    with contextlib.suppress(Exception):
        default_store().set(FAILED_KEY.format(rank=ctx.rank), reason.splitlines()[0] if reason else "failed")


def reported_failures(ctx: DistContext) -> dict[int, str]:
    """Reasons other ranks posted, by rank."""
    out = {}
    with contextlib.suppress(Exception):
        store = default_store()
        for r in range(ctx.world_size):
            key = FAILED_KEY.format(rank=r)
            if r != ctx.rank and store.check([key]):
                out[r] = store.get(key).decode()
    return out


def silent_ranks(ctx: DistContext, wait_s: float = ROLL_CALL_S) -> list[int]:
    """Roll call after a broken collective: the ranks that do not post 'alive' within wait_s."""
    try:
        store = default_store()
        store.set(ALIVE_KEY.format(rank=ctx.rank), "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(ctx.world_size) if not store.check([ALIVE_KEY.format(rank=r)])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.1)
    except Exception:
        return []  # the store died with its host (rank 0 outside torchrun): nothing to learn


def lost_contact_error(ctx: DistContext, exc: BaseException, wait_s: float = ROLL_CALL_S) -> RlvrError:
    """The one line a surviving rank exits with after a collective broke."""
    failures = reported_failures(ctx)
    if failures:
        rank, reason = min(failures.items())
        return RlvrError(f"rank {rank} failed: {reason} (rank {ctx.rank} stopped as well; the last checkpoint "
                         "is intact: fix the cause and resume with --resume)")
    silent = silent_ranks(ctx, wait_s)
    if silent:
        who = ", ".join(str(r) for r in silent)
        return RlvrError(f"rank {who} died or stopped answering (rank {ctx.rank} lost contact: "
                         f"{str(exc).splitlines()[0][:160]}); the last checkpoint is intact: check that rank's "
                         "log (killed? out of host memory?) and resume with --resume")
    return RlvrError(f"rank {ctx.rank}: a collective with the other ranks failed or timed out after "
                     f"{ctx.timeout_s:g} s ({str(exc).splitlines()[0][:160]}); check every rank's log, raise "
                     "train.ddp_timeout if a step legitimately takes longer, and resume with --resume")


@contextlib.contextmanager
def rank_guard(ctx: DistContext, wait_s: float = ROLL_CALL_S):
    """Run a rank's work: a failure here is posted for the others; a peer's failure becomes one line."""
    if not ctx.is_distributed:
        yield
        return
    try:
        yield
    except RlvrError as e:
        report_failure(ctx, str(e))
        raise
    except Exception as e:  # KeyboardInterrupt and SystemExit are not failures to post
        if is_collective_failure(e):
            raise lost_contact_error(ctx, e, wait_s) from e
        report_failure(ctx, f"{type(e).__name__}: {e}")
        raise

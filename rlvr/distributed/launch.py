"""`rlvr train|sft --nproc N`: start the same command under torchrun, one process per device.

The command line is re-run as `python -m torch.distributed.run --standalone --nproc-per-node N -m rlvr
...` (without --nproc), replacing this process, with NVLink multicast kept off in the environment
the workers inherit. Several nodes: run torchrun yourself on each node (see the README).
"""

from __future__ import annotations

import os
import sys

from rlvr.distributed.context import launched_by_torchrun, set_no_multicast_env
from rlvr.errors import RlvrError


def without_nproc(argv: list[str]) -> list[str]:
    """argv with `--nproc N` / `--nproc=N` removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_argv(nproc: int, rlvr_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "rlvr", *rlvr_args]


def check_nproc(nproc: int, environ=os.environ, gpus: int | None = None) -> None:
    if launched_by_torchrun(environ):
        raise RlvrError("--nproc was given inside a torchrun job; drop --nproc (torchrun already started the "
                        "processes) or run rlvr directly")
    if nproc < 1:
        raise RlvrError(f"--nproc {nproc}: give the number of processes to start (at least 1)")
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise RlvrError(f"--nproc {nproc} but this machine has {gpus} GPU(s); use at most one process per GPU")


def exec_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by torchrun running `rlvr <argv without --nproc>` on nproc processes."""
    check_nproc(nproc)
    set_no_multicast_env()
    cmd = torchrun_argv(nproc, without_nproc(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)

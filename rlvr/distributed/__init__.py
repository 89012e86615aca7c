"""Data-parallel training over torchrun's processes on PyTorch's own stack.

context.py (rank, world size, device, backend from torchrun's environment), sharding.py (which rank
generates and trains on what: pure index arithmetic), collectives.py (gradient sums, row gathers,
metric reduction), parallel.py (replicated adapters or FSDP2-sharded decoder layers, gradient
clipping over both), checkpoint.py (torch.distributed.checkpoint: resume on any world size),
faults.py (a failed rank takes the job down with one line naming it), launch.py (`--nproc N`).
"""

from rlvr.distributed.context import DistContext, init_distributed, shutdown

__all__ = ["DistContext", "init_distributed", "shutdown"]

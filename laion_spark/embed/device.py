"""Where a task's model runs: the GPU Spark gave the task, or the CPU with the task's share of cores.

INPUT  -> the task's resources ({"gpu": ["0"]}, from TaskContext.resources()), embed.device,
          embed.precision, how many CUDA devices torch sees, the task's CPUs
OUTPUT -> a DeviceChoice (torch device string + autocast dtype name) and a torch thread count

select_device and cpu_threads are pure functions (unit-tested with fake resource maps); only
task_resources / task_cpus look at the running Spark task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

GPU = "gpu"  # Spark's resource name for GPUs (spark.executor.resource.gpu.amount)


class DeviceError(RuntimeError):
    """embed.device=cuda where no CUDA device can be used; the message says why."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # torch device: "cpu" or "cuda:N"
    autocast: str | None  # None (plain fp32), "fp16" or "bf16"
    reason: str  # why this device, for the worker's log

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def _cuda_index(address: str, cuda_count: int) -> int:
    """A Spark GPU address ("0", "3") + devices torch sees -> the torch device index.

    Spark's addresses are what the discovery script printed (nvidia-smi indices). Where the
    container or CUDA_VISIBLE_DEVICES shows this task one GPU only (YARN, Kubernetes), torch calls
    it 0 whatever its physical index.
    """
    try:
        index = int(str(address).strip())
    except ValueError:
        if cuda_count == 1:
            return 0
        raise DeviceError(f"Spark gave this task GPU {address!r}, which is not a device index, and torch sees "
                          f"{cuda_count} CUDA devices; make the discovery script print indices") from None
    if 0 <= index < cuda_count:
        return index
    if cuda_count == 1:
        return 0
    raise DeviceError(f"Spark gave this task GPU {address}, but torch sees only {cuda_count} CUDA device(s) "
                      "(check CUDA_VISIBLE_DEVICES against the discovery script)")


def select_device(resources: Mapping[str, Sequence[str]] | None, device: str, precision: str,
                  cuda_count: int) -> DeviceChoice:
    """Task resources + embed.device / precision + CUDA devices torch sees -> DeviceChoice.

    - cpu: the CPU.
    - auto: the first GPU address Spark gave the task when torch can use it; else the CPU (a GPU
      that torch cannot see is logged, not fatal). No GPU resource -> CPU, even when the machine
      has GPUs: Spark did not schedule one, so concurrent tasks would share it unplanned.
    - cuda: the task's GPU; without a GPU resource, cuda:0 (local mode on one GPU machine);
      DeviceError when torch sees no CUDA device.
    precision auto = fp16 autocast on CUDA, plain fp32 on CPU; fp16 / bf16 = autocast with that
    dtype on either; fp32 = no autocast.
    """
    addresses = [str(a) for a in ((resources or {}).get(GPU) or ())]
    if device == "cpu":
        target, reason = "cpu", "embed.device=cpu"
    elif device == "auto":
        if addresses and cuda_count > 0:
            target, reason = f"cuda:{_cuda_index(addresses[0], cuda_count)}", f"Spark gave the task GPU {addresses[0]}"
        elif addresses:
            target, reason = "cpu", (f"Spark gave the task GPU {addresses[0]} but torch sees no CUDA device "
                                     "(a CPU-only torch build?): using the CPU")
        else:
            target, reason = "cpu", "no GPU in the task's resources"
    elif device == "cuda":
        if cuda_count <= 0:
            raise DeviceError("embed.device=cuda but torch sees no CUDA device on this executor "
                              f"(torch CUDA build and driver; task resources: {dict(resources or {})})")
        if addresses:
            target, reason = f"cuda:{_cuda_index(addresses[0], cuda_count)}", f"Spark gave the task GPU {addresses[0]}"
        else:
            target, reason = "cuda:0", "embed.device=cuda and no GPU resource scheduled: cuda:0"
    else:
        raise ValueError(f"embed.device must be auto, cpu or cuda, not {device!r}")
    if precision == "auto":
        autocast = "fp16" if target != "cpu" else None
    elif precision in ("fp16", "bf16"):
        autocast = precision
    elif precision == "fp32":
        autocast = None
    else:
        raise ValueError(f"embed.precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    return DeviceChoice(target, autocast, reason)


def cpu_threads(configured: int, task_cpus: int | None) -> int:
    """embed.cpu_threads + the task's CPUs (spark.task.cpus) -> torch threads for this task.

    An executor runs cores / spark.task.cpus tasks at once, each in its own Python worker; each
    taking spark.task.cpus threads keeps the executor's cores busy without oversubscribing them.
    """
    if configured > 0:
        return configured
    return max(1, int(task_cpus or 1))


def task_resources() -> dict[str, list[str]]:
    """The running Spark task's resources as {name: [addresses]} ({} outside a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return {}
    return {name: list(info.addresses) for name, info in (ctx.resources() or {}).items()}


def task_cpus() -> int | None:
    """The running Spark task's CPUs (spark.task.cpus); None outside a task."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.cpus() if ctx is not None else None

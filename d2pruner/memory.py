"""Free and total memory of a device — what the analysis sizes its batches by and what the app's model host
budgets with. Torch is imported only for a CUDA device."""

from __future__ import annotations


def _meminfo(field: str) -> float | None:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return float(line.split()[1]) * 1024
    return None


def free_bytes(device: object) -> float | None:
    """Free bytes on ``device`` (a ``torch.device`` or its name; CUDA: free memory, else the system's
    MemAvailable), or None when unknown."""
    try:
        if str(device).startswith("cuda"):
            import torch

            return float(torch.cuda.mem_get_info(torch.device(str(device)))[0])
        return _meminfo("MemAvailable")
    except (OSError, RuntimeError, ValueError, IndexError, AssertionError):
        return None


def total_bytes(device: object) -> float | None:
    """Total bytes of ``device`` (CUDA: the GPU's memory, else the system's MemTotal), or None when unknown."""
    try:
        if str(device).startswith("cuda"):
            import torch

            return float(torch.cuda.get_device_properties(torch.device(str(device))).total_memory)
        return _meminfo("MemTotal")
    except (OSError, RuntimeError, ValueError, IndexError, AssertionError):
        return None

"""The precision a run trains in: ``trainer.precision`` resolved on this machine, and its autocast.

- ``fp32``: everything in fp32.
- ``bf16``: ``torch.autocast(<device>, dtype=torch.bfloat16)``: matmuls in bf16; the weights,
  the optimizer, the norms' statistics and the loss's log-softmax in fp32. On CUDA as on CPU.
- ``auto``: bf16 on CUDA; on a CPU only where it has bf16 instructions (AMX-BF16 or AVX512-BF16,
  the ``amx_bf16``/``avx512_bf16`` flags of Linux's /proc/cpuinfo), where bf16 matmuls are fast;
  elsewhere (AMD Zen 1-3, older Intel, or no /proc/cpuinfo, as on macOS) fp32, where bf16 would
  be emulated and slower.

A run resolves ``auto`` once, at its first start, and records the result in config.json
(``meta.precision``) and final.json (``precision``): a resume keeps it, on whatever machine.
(``torch.backends.cpu.get_cpu_capability()`` says "AVX512" whether or not the CPU has the
bf16 extension, so it cannot tell; hence the flags.) No torch at import.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16")  # what a setting resolves to
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of /proc/cpuinfo); empty where there
    is no such file."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags runs bf16 matmuls in hardware (AMX-BF16 or AVX512-BF16)."""
    return not CPU_BF16_FLAGS.isdisjoint(flags)


def resolve_precision(setting: str, device_type: str, flags: Iterable[str] | None = None) -> str:
    """``trainer.precision`` (``auto``, ``bf16``, ``fp32``) on a device of ``device_type``
    ("cuda", "cpu"): "bf16" or "fp32". ``flags``: the CPU's (``cpu_flags()`` if None)."""
    if setting in PRECISIONS:
        return setting
    if setting != "auto":
        raise ValueError(f"trainer.precision={setting!r}: expected 'auto', 'bf16' or 'fp32'")
    if device_type == "cuda":
        return "bf16"
    if device_type == "cpu":
        return "bf16" if cpu_has_fast_bf16(cpu_flags() if flags is None else flags) else "fp32"
    return "fp32"


def legacy_precision(config: dict[str, Any]) -> str | None:
    """The precision a run of reatt before ``trainer.precision`` trained in, from its config.json
    (``trainer.amp`` and ``meta.device``): bf16 autocast on CUDA when amp was on, else fp32
    (that reatt never used autocast on CPU). None if the file does not say."""
    trainer, meta = config.get("trainer"), config.get("meta")
    if not isinstance(trainer, dict) or not isinstance(meta, dict) or "amp" not in trainer:
        return None
    device = meta.get("device")
    if not isinstance(device, str):
        return None
    return "bf16" if trainer["amp"] is True and device != "cpu" else "fp32"


def recorded_precision(config: dict[str, Any]) -> str | None:
    """The resolved precision a run's config.json records (``meta.precision``; for a run of
    older reatt, ``legacy_precision``), or None."""
    meta = config.get("meta")
    value = meta.get("precision") if isinstance(meta, dict) else None
    if value in PRECISIONS:
        return str(value)
    return legacy_precision(config)


def autocast(device_type: str, precision: str) -> AbstractContextManager[Any]:
    """The context a forward pass runs in at ``precision`` (resolved) on ``device_type``."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return nullcontext()

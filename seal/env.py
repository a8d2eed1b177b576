"""``seal env``: the environment a bug report needs, in one place.

Versions of seal and the libraries it runs on, Python, the platform, the CPU model (``lscpu``),
the accelerator devices and CUDA, and whether the optional flash-attn and vLLM are importable
(DeepSpeed, the ``deepspeed`` extra, is among the libraries: a version or 'not installed'). Nothing here imports torch at module level, so ``seal --help`` stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

import seal

LIBRARIES = ["torch", "transformers", "peft", "trl", "accelerate", "deepspeed", "datasets", "tokenizers", "huggingface-hub", "pydantic"]
"""Distributions whose versions ``seal env`` and ``run.json`` report (None when not installed)."""

OPTIONAL = {"flash-attn": "flash_attn", "vllm": "vllm"}
"""Optional packages (distribution -> module): installed or not, and their version."""


def version_of(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None when it is not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """``{"seal": seal.__version__, library: version or None}`` for :data:`LIBRARIES`."""
    return {"seal": seal.__version__} | {name: version_of(name) for name in LIBRARIES}


def cpu_model() -> str | None:
    """The CPU's model name: ``lscpu``'s "Model name", else ``/proc/cpuinfo``'s "model name",
    else ``platform.processor()`` (None when none of them says)."""
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and value.strip():
                return value.strip()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def devices() -> dict[str, Any]:
    """torch's view of the accelerators: CUDA available, its version (torch's build), cuDNN,
    and each device's name, memory (GiB) and compute capability."""
    import torch  # here: seconds to import

    info: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}"}
            )
    return info


def environment_report() -> dict[str, Any]:
    """Everything ``seal env`` prints, as data (see the module docstring)."""
    return {
        "seal": seal.__version__,
        "distribution": seal.DISTRIBUTION,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "libraries": {k: v for k, v in library_versions().items() if k != "seal"},
        "optional": {name: {"installed": importlib.util.find_spec(module) is not None, "version": version_of(name)} for name, module in OPTIONAL.items()},
        **devices(),
    }


def format_report(report: dict[str, Any]) -> str:
    """``report`` as ``key: value`` lines, ready to paste into a bug report."""
    lines = [
        f"seal: {report['seal']} ({report['distribution']})",
        f"python: {report['python']} ({report['executable']})",
        f"platform: {report['platform']}",
        f"cpu: {report['cpu']} ({report['cpu_count']} logical cores, torch threads {report['torch_threads']})",
    ]
    lines += [f"{name}: {version or 'not installed'}" for name, version in report["libraries"].items()]
    cuda = "available" if report["cuda_available"] else "not available"
    lines.append(f"cuda: {cuda} (torch built with CUDA {report['torch_cuda'] or 'none'}, cuDNN {report['cudnn'] or 'none'})")
    for d in report["devices"]:
        lines.append(f"device {d['index']}: {d['name']}, {d['memory_gib']} GiB, compute capability {d['capability']}")
    if not report["devices"]:
        lines.append("devices: cpu only")
    for name, state in report["optional"].items():
        lines.append(f"{name}: {state['version'] or 'installed' if state['installed'] else 'not installed'}")
    return "\n".join(lines)

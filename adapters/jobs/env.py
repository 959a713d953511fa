"""What outside a job's arguments changes ε's bits: threads, device, versions (docs/jobs.md,
"Determinism").  Recorded with every job and compared when it is resumed or read back."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from lmsolvers import __version__ as LMSOLVERS_VERSION

from .config import EnvironmentMismatchError, JobConfig, JobError

__all__ = ["ENV_KEYS", "environment", "env_diff", "check_env", "resolve_device",
           "setup_threads"]

#: the keys of the environment record that change ε's bits (compared on resume/reconstruct)
ENV_KEYS = ("threads", "deterministic", "device", "torch", "diffusers", "lmsolvers",
             "cpu_capability", "cuda", "cudnn")



def resolve_device(name: str) -> torch.device:
    """The torch device of a name; ``cuda`` without an index is ``cuda:LOCAL_RANK``."""
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything outside the job's arguments that can change ε's bits, as recorded.

    Thread count, deterministic-algorithms flag, device (type and model name, not the
    index: rank 1's ``cuda:1`` is the same kind of device as rank 0's ``cuda:0``), the
    torch/diffusers/lmsolvers versions, the CPU's vector instruction set, CUDA/cuDNN.
    """
    dev = torch.device(device)
    try:
        import diffusers
        dver = diffusers.__version__
    except ImportError:  # entry-point models need no diffusers
        dver = None
    name = "cpu"
    if dev.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(dev)})"
    elif dev.type != "cpu":
        name = dev.type
    cudnn = torch.backends.cudnn.version() if dev.type == "cuda" else None
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "device": name,
        "torch": torch.__version__,
        "diffusers": dver,
        "lmsolvers": LMSOLVERS_VERSION,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "cudnn": cudnn,
    }


def env_diff(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The differences of the keys that change ε's bits (:data:`ENV_KEYS`), one line each."""
    return [f"{k}: {recorded.get(k)!r} recorded, {now.get(k)!r} now" for k in ENV_KEYS
            if recorded.get(k) != now.get(k)]


def check_env(recorded: Mapping[str, Any], now: Mapping[str, Any], allow: bool,
               where: str) -> list[str]:
    """Compare the environment ``now`` with the ``recorded`` one: a difference raises
    :class:`EnvironmentMismatchError` naming it (``allow``: warns instead); returns the
    differences."""
    diff = env_diff(recorded, now)
    if diff:
        msg = (f"{where}: the environment differs from the one the latents were computed in "
               f"({'; '.join(diff)}); ε may give other bits, so the result would silently "
               "differ")
        if not allow:
            hint = (f" (--threads {recorded.get('threads')})"
                    if recorded.get("threads") != now.get("threads") else "")
            raise EnvironmentMismatchError(
                msg + f". Run with the recorded settings{hint}, or pass --allow-env-mismatch "
                "to go on anyway")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return diff



def setup_threads(cfg: JobConfig) -> None:
    """Set the job's torch thread count (and deterministic algorithms if asked)."""
    if not (isinstance(cfg.threads, int) and cfg.threads >= 1):
        raise JobError(f"threads must be a positive integer, got {cfg.threads!r}")
    torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)


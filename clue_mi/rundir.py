"""Run folders of ``clue-mi run``: created whole or not at all, resumed only as recorded.

Rules (README, "The default experiment"):

* A new run folder appears in one step. Its setup (``config.json``, ``environment.json``, the
  circuits, the localization and the masks) is written into a hidden sibling
  ``.NAME.partial-PID`` that is renamed to ``NAME`` only when complete, so bad input, an
  empty circuit or a crash during setup never leaves a run folder behind.
* A run that fails later (an exception, Ctrl-C) leaves its folder resumable with a ``FAILED``
  file saying why; a killed one (SIGKILL, power loss) is recognised by its missing
  ``report.md``. Either way ``--resume DIR`` finishes it, and a new run never reuses it.
* Resuming trusts only what the folder records: its ``config.json`` (other options are refused,
  so two configurations never mix in one table), and its circuits, localization and masks (a
  damaged one is an error: the finished methods were computed from it and a recomputation
  cannot prove it equal). A damaged ``results/METHOD.json`` only means that method runs again.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clue_mi.options import check_output_location

FAILED = "FAILED"
ENVIRONMENT = "environment.json"


class RunFolderError(ValueError):
    """A run folder that cannot be resumed as it is (the message says which file and why)."""


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a half-written file would be trusted on resume."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file of a run folder, or raise one line naming the file and the damage."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is unreadable ({what}): {err}") from None


def check_new(out: str | Path) -> Path:
    """A new run folder must not exist yet and must be creatable where it is asked for."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(
            f"run folder {out} already exists; choose a new --out, or --resume {out} to "
            "finish an interrupted run"
        )
    check_output_location(out)
    return out


def check_resumable(out: str | Path) -> dict[str, Any]:
    """An unfinished run folder; returns its recorded ``config.json``."""
    out = Path(out)
    if not out.exists():
        raise FileNotFoundError(f"cannot resume {out}: no such run folder")
    if not out.is_dir():
        raise NotADirectoryError(f"cannot resume {out}: it is a file, not a run folder")
    if (out / "report.md").exists():
        raise FileExistsError(f"run folder {out} holds a finished run; it is not rewritten")
    config = read_json(out / "config.json", "the run's configuration")
    if not isinstance(config, dict):
        raise RunFolderError(f"{out / 'config.json'} is not a run configuration")
    return config


def config_differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``key: given vs recorded`` for every option that differs (nested keys dotted)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, dict) and key != "extra":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    a = flat(json.loads(json.dumps(recorded, default=str)))
    b = flat(json.loads(json.dumps(given, default=str)))
    return [
        f"{key}: {b.get(key)!r} given, {a.get(key)!r} recorded"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


@contextmanager
def creating(out: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to write the run's setup into; rename it to ``out`` when
    the block ends without error, remove it otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed process with our pid
    partial.mkdir()
    try:
        yield partial
        if out.exists():  # someone else created it meanwhile: never merge two runs
            raise FileExistsError(f"run folder {out} appeared while this run was being set up")
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


@contextmanager
def failure_marked(out: Path, command: str = "run") -> Iterator[None]:
    """While the block runs, an exception leaves ``out/FAILED`` saying what stopped the run and
    how to finish it; a successful block (or a resume that starts it) removes the file."""
    (out / FAILED).unlink(missing_ok=True)
    try:
        yield
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
        try:
            (out / FAILED).write_text(
                f"clue-mi {command} stopped: {reason}\n"
                f"finish it with: clue-mi {command} --resume {out}\n"
            )
        except OSError:
            pass  # the original error matters more than the marker
        raise


def _torch_build_line(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


def environment(device: str | None = None) -> dict[str, Any]:
    """What a table depends on beyond the seed: software versions, threads and CPU kernels.

    Floating-point results differ between CPUs, kernel choices (AVX2 / AVX-512 / AMX paths of
    torch, MKL and oneDNN) and thread counts; training amplifies near-ties. Recording these
    says when two tables can be expected to match byte for byte.
    """
    import numpy
    import torch
    import transformers

    build = torch.__config__.show()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": _torch_build_line(r"Math Kernel Library Version ([^\n]+?) for", build),
        "onednn": _torch_build_line(r"MKL-DNN (v[^\s]+)", build),
        # torch does not expose the ISA oneDNN dispatches to; these variables cap it when set.
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")
        or os.environ.get("DNNL_MAX_CPU_ISA"),
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_line(env: dict[str, Any]) -> str:
    """One line for the report: the facts of :func:`environment` that move numbers."""
    parts = [
        f"torch {env.get('torch')}",
        f"{env.get('torch_threads')} threads",
        f"CPU capability {env.get('cpu_capability')}",
        f"oneDNN {env.get('onednn')}",
        f"MKL {env.get('mkl')}",
        f"CPU {env.get('cpu')}",
        f"Python {env.get('python')}",
    ]
    if env.get("cuda_device"):
        parts.append(f"GPU {env['cuda_device']}")
    return ", ".join(parts)


def record_environment(out: Path, log: Callable[[str], None], device: str | None) -> None:
    """Write ``environment.json`` for a new run, or on resume add this process's environment
    to it and say so when it differs (a mixed table is then not reproducible byte for byte)."""
    path = out / ENVIRONMENT
    now = environment(device)
    if not path.exists():
        write_json(path, {"created": now, "resumed": []})
        return
    recorded = read_json(path, "the environment the run was created in")
    if recorded.get("created") != now:
        log(
            "warning: resuming under a different environment than the run was created in; "
            "its table may not match an uninterrupted run byte for byte"
        )
    recorded.setdefault("resumed", []).append(now)
    write_json(path, recorded)

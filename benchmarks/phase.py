"""One measurement in its own process: ``python -m benchmarks.phase IN.json OUT.json``.

Each configuration (our pipeline on one provider, one diffusers variant, the matmul probe) runs
in a fresh interpreter so that (a) its peak RSS is its own (``VmHWM``; not ``ru_maxrss``, which
Linux carries across exec from the parent that spawned it), (b) torch and ONNX
Runtime never share the cores' thread pools, and (c) GBs of weights are returned to the OS
before the next configuration loads. The parent samples GPU memory with nvidia-smi. The
optimum-intel baseline runs this module with its own venv's interpreter (kind ``optimum``):
only the standard library and ``memory`` are imported here before the kind is known.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .memory import vm_hwm_mb


def _log(msg: str) -> None:
    print(msg, flush=True)


def partial_path(dst: Path) -> Path:
    """Where a phase keeps the configurations it has finished (read if it is killed)."""
    return dst.with_name(dst.stem + ".partial.json")


def run(spec: dict[str, Any], partial: Path | None = None) -> dict[str, Any]:
    kind = spec["kind"]
    args = spec["args"]

    def keep(runs: list) -> None:
        if partial is not None:
            partial.write_text(json.dumps({"runs": runs}, default=float))

    if kind == "ours":
        from .inprocess import bench_ours

        return {"runs": bench_ours(Path(args.pop("folder")), log=_log, on_result=keep, **args)}
    if kind == "diffusers":
        from .baseline import bench_diffusers

        pipeline = Path(args.pop("pipeline"))
        return {"runs": bench_diffusers(pipeline, log=_log, on_result=keep, **args)}
    if kind == "optimum":  # runs in the optimum-intel venv (optimum_venv.py)
        from .optimum_pipe import bench_optimum

        return bench_optimum(args.pop("model_dir"), log=_log, **args)
    if kind == "flops":
        from .flops import count_components

        return count_components(Path(args["folder"]), args["shapes"], log=_log)
    if kind == "probe":
        from .probe import probe

        return probe(**args)
    raise ValueError(f"unknown phase kind {kind!r}")


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    spec = json.loads(src.read_text())
    t0 = time.perf_counter()
    try:
        result = run(spec, partial_path(dst))
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which notes and goes on
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["phase_s"] = time.perf_counter() - t0
    hwm = vm_hwm_mb(os.getpid())
    result["peak_rss_mb"] = (
        hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    dst.write_text(json.dumps(result, default=float))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

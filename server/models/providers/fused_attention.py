"""Attention on AMX tiles inside OpenVINO graphs: the kernel and its build.

An SD 1.5 UNet at 512x512 has five self-attention layers over 4096 tokens (8 heads, 40 dims);
each holds 134 M scores. OpenVINO's fused MHA spends ~60 ms on such a layer on a 2-core AMX
Xeon, almost all of it in the softmax; ``kernels/attention_amx.cpp`` takes ~20 ms (scores kept
per 16-query block in L2, a 5-instruction exponential, bf16 tiles for both products).

The kernel is C++ (threads from TBB, which the OpenVINO wheel ships), built once with the
machine's g++ (``make install`` and the CPU image's build do it, on any x86-64 CPU: compiling
needs no AMX; the first use does it where that was skipped) and called through ctypes from
``openvino_attention.FusedAttention``, the OpenVINO operation that ``fuse_attention`` puts in
place of ``MatMul -> Softmax -> MatMul``. Where the CPU lacks AMX-BF16, no compiler is there,
or ``--amx-attention off`` says so, nothing is rewritten.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from server.models.cpu_features import read_cpu_flags

#: version of ``fuse_attention`` and its kernel, part of the OpenVINO provider's cache keys
ATTENTION_VERSION = 1

#: head widths (query/key and value) the kernel takes: two and four tiles
MAX_HEAD_DIM = 64
#: key counts below this stay with OpenVINO (cross-attention's 77 text tokens: small, and a
#: 64-key padding would waste 40% of the kernel's work)
MIN_KEYS = 256

SOURCE = Path(__file__).with_name("kernels") / "attention_amx.cpp"

#: ``--amx-attention``: auto = on where the CPU has AMX-BF16 and the kernel builds; on = the
#: same, but a machine where it cannot run refuses to start; off = OpenVINO's own attention
MODES = ("auto", "on", "off")

log = logging.getLogger("server.models.providers")


def check_mode(mode: str) -> None:
    """``--amx-attention``'s value: one of ``MODES``."""
    if mode not in MODES:
        raise ValueError(f"--amx-attention must be one of {', '.join(MODES)}, got {mode!r}")


def require(mode: str) -> None:
    """Raise ``ProviderUnavailable`` when ``mode`` is "on" and the kernel cannot run here."""
    from .base import ProviderUnavailable

    if mode == "on" and load() is None:
        why = why_not() or "the openvino runtime is not installed"
        raise ProviderUnavailable(
            f"--amx-attention on, but the AMX attention kernel cannot run here: {why} "
            "(use auto or off)"
        )


def build_dirs() -> list[Path]:
    """Where builds live, searched in this order: beside the source (a checkout, or an image
    whose build step ran as root) and the user's cache (a read-only package served by another
    user: ``make install`` cannot write there)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [SOURCE.parent / "build", cache / "inpaint-server" / "kernels"]


def _writable(folder: Path) -> bool:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return os.access(existing, os.W_OK)


CFLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-mamx-tile", "-mamx-bf16", "-mavx512f",
          "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma")  # fmt: skip

_lock = threading.Lock()
_library: list = []  # [(CDLL or None, why not)] once loaded (or found unusable)


def _openvino_dir() -> Path:
    """The installed openvino package: its wheel ships TBB's headers and library."""
    import openvino

    return Path(openvino.__file__).parent


def library_path() -> Path:
    """The build of this source, with these flags, against this OpenVINO's TBB (the digest in
    the name covers all three): an existing one from ``build_dirs()``, else where ``build``
    puts it (the first of them it may write)."""
    key = SOURCE.read_bytes() + " ".join(CFLAGS).encode() + str(_openvino_dir()).encode()
    name = f"libattention_amx-{hashlib.sha256(key).hexdigest()[:16]}.so"
    dirs = build_dirs()
    found = next((d / name for d in dirs if (d / name).exists()), None)
    return found or next((d for d in dirs if _writable(d)), dirs[-1]) / name


def build(compiler: str | None = None) -> Path:
    """Compile the kernel (if not built yet) and return the library's path. Raises
    ``RuntimeError`` with the compiler's message when it cannot."""
    target = library_path()
    if target.exists():
        return target
    cxx = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) found to build the AMX attention kernel")
    if not (os.path.isfile(cxx) or shutil.which(cxx)):
        raise RuntimeError(f"the C++ compiler {cxx!r} does not exist (CXX or the g++ on PATH)")
    ov_dir = _openvino_dir()
    libs = ov_dir / "libs"
    tbb = next(iter(sorted(libs.glob("libtbb.so*"))), None)
    if tbb is None:
        raise RuntimeError(f"no libtbb in {libs} to build the AMX attention kernel against")
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        cmd = [cxx, *CFLAGS, f"-I{ov_dir / 'include'}", "-o", str(partial), str(SOURCE),
               str(tbb), f"-Wl,-rpath,{libs}"]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:  # not executable, vanished between the check and the call...
            raise RuntimeError(f"could not run the C++ compiler {cxx!r}: {e}") from e
        if done.returncode:
            raise RuntimeError(f"building {SOURCE.name} failed: {done.stderr.strip()[-2000:]}")
        partial.replace(target)  # atomic: concurrent builders leave one whole file
    finally:
        partial.unlink(missing_ok=True)
    for stale in folder.glob("libattention_amx-*.so"):  # earlier sources' builds
        if stale != target:
            stale.unlink(missing_ok=True)  # a process that mapped it keeps its copy
    return target


def cpu_has_amx(flags=None) -> bool:
    """True where the CPU reports AMX tiles with bf16 products (Linux ``/proc/cpuinfo``)."""
    have = read_cpu_flags() if flags is None else set(flags)
    return {"amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512dq"} <= set(have)


def load():
    """The kernel library, ready to call (AMX granted to this process), or None where this CPU
    lacks AMX-BF16 or the kernel cannot be built (``why_not()`` says which). Loaded once per
    process."""
    with _lock:
        if not _library:
            lib, why = _load()
            _library.append((lib, why))
            if lib is None and why and cpu_has_amx():  # worth a line only where AMX exists
                log.warning("AMX attention kernel off (OpenVINO's attention instead): %s", why)
        return _library[0][0]


def why_not() -> str:
    """Why ``load()`` returned None ("" when it found the kernel, or before it ran)."""
    return _library[0][1] if _library else ""


def _load():
    if not cpu_has_amx():
        return None, "this CPU has no AMX-BF16"
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, ImportError) as e:
        return None, f"{type(e).__name__}: {e}"
    if lib.attn_amx_init() != 0:  # the kernel refuses to run without the AMX state
        return None, "the kernel was refused the AMX state (arch_prctl)"
    ptr = ctypes.c_void_p
    lib.attn_amx.argtypes = [ptr] * 4 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int]
    lib.attn_amx.restype = ctypes.c_int
    return lib, ""


def attention(q, k, v, *, k_dk: bool = False, scale: float = 1.0, threads: int = 0, out=None):
    """``softmax(scale * q @ k^T) @ v`` over the last two axes, float32 in and out.

    q: [..., Lq, D]; k: [..., Lk, D], or [..., D, Lk] when ``k_dk``; v: [..., Lk, Dv]; the
    leading axes equal. Computed in bf16 with fp32 sums on AMX where ``load()`` succeeds and
    D, Dv <= 64; else in float32 numpy (the same result within bf16 rounding). ``threads``: 0
    shares the calling TBB arena's workers (inside an OpenVINO graph: the inference's), n > 0
    uses an arena of n.
    """
    q, k, v = (np.ascontiguousarray(x, dtype=np.float32) for x in (q, k, v))
    lead = q.shape[:-2]
    lq, d, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    lk = k.shape[-1] if k_dk else k.shape[-2]
    shape = (*lead, lq, dv)
    if out is None:
        out = np.empty(shape, np.float32)
    lib = load()
    fits = k.shape[:-2] == lead == v.shape[:-2] and d <= MAX_HEAD_DIM and dv <= MAX_HEAD_DIM
    if lib is not None and fits and out.flags.c_contiguous and out.dtype == np.float32:
        batch = int(np.prod(lead, dtype=np.int64))
        rc = lib.attn_amx(q.ctypes.data, k.ctypes.data, v.ctypes.data, out.ctypes.data,
                          batch, lq, lk, d, dv, int(k_dk), float(scale), int(threads))  # fmt: skip
        if rc == 0:
            return out
    kt = k if k_dk else np.swapaxes(k, -1, -2)
    s = np.matmul(q, kt) * np.float32(scale)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    out[...] = np.matmul(s, v)
    return out


def buildable() -> str:
    """Why this machine cannot build the kernel ("" when it can try): an x86-64 CPU and the
    OpenVINO wheel (its TBB) are needed; AMX is not (an image is built on another machine than
    the one that serves it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 machine ({platform.machine()})"
    try:
        _openvino_dir()
    except ImportError:
        return "the openvino package is not installed"
    return ""


def main() -> int:
    """``make install`` and the CPU image's build: compile ahead of the first request, on any
    x86-64 CPU. Prints one line and exits 0 whatever happens: a missing compiler must never
    fail an install (the served graphs then keep OpenVINO's attention)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    skip = buildable()
    if skip:
        log.info("AMX attention kernel not built: %s (nothing to build)", skip)
        return 0
    try:
        where = build()
    except (RuntimeError, OSError, ImportError) as e:
        log.warning("AMX attention kernel not built (graphs keep OpenVINO's attention): %s", e)
        return 0
    used = "used on this CPU" if cpu_has_amx() else "unused here: this CPU has no AMX-BF16"
    log.info("AMX attention kernel: %s (%s)", where, used)
    return 0


if __name__ == "__main__":
    sys.exit(main())

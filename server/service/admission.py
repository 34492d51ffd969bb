"""Admission control by memory: what decoding, compositing and encoding of concurrent requests
may hold at once. A request reserves its estimate before the work; over the budget it gets a
429 with ``Retry-After`` at once instead of taking the process to several GB.

The estimate is an upper bound of the arrays one request holds (uint8 RGBA decodes, float32
masks, the composite's float32 intermediates, the encoded outputs), written once here.
"""

from __future__ import annotations

import ctypes
import os
import threading

from ..errors import overloaded, too_large_for_server

#: bytes held per input pixel: the decoded RGBA, Pillow's copy, a mask RGBA and the float32
#: edit region
BYTES_PER_INPUT_PIXEL = 20
#: bytes per output pixel: canvas RGBA, edit float32, one image's composite (uint8 copies and
#: float32 blend intermediates) while it is composed and encoded
BYTES_PER_OUTPUT_PIXEL = 40
#: per output image kept until the response is sent (encoded PNG worst case + its base64)
BYTES_PER_RESULT_PIXEL = 8
RETRY_AFTER_S = 2


#: glibc mallopt parameters (malloc.h) and the values the server runs with: blocks of 1 MiB and
#: more always come from (and go back to) mmap, the heap is trimmed past 8 MiB free, and threads
#: share at most 4 arenas, so that the RSS of a burst of large images returns to the OS
#: instead of staying with the allocator
_MALLOPT = {-3: 1 << 20, -1: 8 << 20, -8: 4}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_ARENA_MAX


def return_freed_memory() -> bool:
    """Tune glibc's allocator as ``_MALLOPT`` says; False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _MALLOPT.items())


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


#: where a container's memory limit is (cgroup v2, then v1)
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def available_memory_bytes() -> int:
    """The machine's memory, or the container's limit when that is lower."""
    total = machine_memory_bytes()
    for path in CGROUP_LIMITS:
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdecimal():
            total = min(total, int(text))
    return total


def default_budget_bytes() -> int:
    """A quarter of the memory available to the process (a container's limit counts), at
    least 1 GiB."""
    return max(1 << 30, available_memory_bytes() // 4)


def edit_bytes(input_pixels: int, output_pixels: int, n: int) -> int:
    """Upper bound of what one edit holds while it is decoded, composed and encoded."""
    return (
        input_pixels * BYTES_PER_INPUT_PIXEL
        + output_pixels * BYTES_PER_OUTPUT_PIXEL
        + n * output_pixels * BYTES_PER_RESULT_PIXEL
    )


class MemoryBudget:
    """A byte budget shared by the requests in flight (thread-safe: reservations grow in
    worker threads)."""

    def __init__(self, total_bytes: int) -> None:
        self.total = int(total_bytes)
        self.used = 0
        self._lock = threading.Lock()

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def _force(self, n: int) -> None:
        with self._lock:
            self.used += n

    def _give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Reservation:
    """One request's share: ``add`` as its needs become known (body bytes as they arrive,
    then pixels), ``hold`` for its encoded answer, ``release`` once when it ends (after the
    answer was written: the HTTP handler writes it before it returns)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    def add(self, n: int) -> None:
        """Reserve ``n`` more bytes, or raise a 429 ``APIError`` (nothing reserved)."""
        if n <= 0:
            return
        if self.held + n > self.budget.total:  # would not fit an idle server either
            raise too_large_for_server(
                f"This request needs more memory than the server's whole budget for requests "
                f"in flight ({self.budget.total // 2**20} MB, --memory-budget-mb): send "
                "smaller images, a smaller size or fewer images (n)."
            )
        if not self.budget._take(n):
            raise overloaded(
                RETRY_AFTER_S,
                "The server is busy: the images in flight fill its memory budget. Retry after "
                "the number of seconds in the Retry-After header (or send smaller images).",
            )
        self.held += n

    def hold(self, n: int) -> None:
        """Count ``n`` bytes that already exist (an encoded answer waiting to be written):
        never refused, even past the budget, so that the requests after it are."""
        if n <= 0:
            return
        self.budget._force(n)
        self.held += n

    def give_back(self, n: int) -> None:
        """Return ``n`` of the bytes reserved (a bound reserved first that turned out higher
        than what is held: a file reference is reserved at the image cap, then its size)."""
        n = min(n, self.held)
        if n > 0:
            self.budget._give(n)
            self.held -= n

    def release(self) -> None:
        self.budget._give(self.held)
        self.held = 0

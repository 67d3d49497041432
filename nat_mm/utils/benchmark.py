"""What the benchmark tools share: peak memory, interleaved timing, NAT-Tiny's layer shapes.

No OpenMMLab import (torch, and timm through nat_mm.models): tools/benchmark_op.py,
tools/benchmark_backbone.py and tools/gpu run on the lent GPU machine, which has torch and timm
alone.

- :class:`PeakMemory`: the extra memory a block of code needs above what the process held when
  it started (one semantics on the CPU and on CUDA, see the class).
- :class:`Stopwatch` and :func:`interleaved`: time calls side by side, A B C A B C ..., so that
  machine noise hits every candidate alike; :func:`timing_stats` gives the medians.
- :func:`environment`: set environment variables around a call (NAT_MM_CUDA_KERNEL).
- :class:`Layer` and :func:`nat_tiny_layers`: NAT-Tiny's attention layers for an input size, with
  the backbone's own rounding (:func:`nat_mm.models.geometry.level_size`: ceil).

Example:
    >>> import torch
    >>> [(layer.H, layer.W, layer.heads) for layer in nat_tiny_layers(800, 1216)]
    [(200, 304, 2), (100, 152, 4), (50, 76, 8), (25, 38, 16)]
    >>> with PeakMemory('cpu') as mem:
    ...     x = torch.ones(2 ** 22)  # 16 MiB
    >>> mem.peak > 0
    True
"""
import contextlib
import ctypes
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Sequence, TypeVar, Union

import torch

from ..models.geometry import level_size

__all__ = ['PeakMemory', 'Stopwatch', 'interleaved', 'timing_stats', 'environment',
           'device_name', 'Layer', 'nat_tiny_layers', 'MMAP_THRESHOLD_ENV']

T = TypeVar('T')

#: glibc's mmap threshold, pinned (``MALLOC_MMAP_THRESHOLD_=65536``) by tools/benchmark_op.py
#: before it starts: above it buffers are mmapped and go back to the system when freed, so the
#: peak resident set tracks the peaks of tensor memory (unpinned, glibc raises the threshold after
#: frees and freed buffers stay resident).
MMAP_THRESHOLD_ENV = ('MALLOC_MMAP_THRESHOLD_', '65536')


class PeakMemory:
    """Peak extra memory (bytes, in ``peak``) of the code inside ``with``: the peak above the
    level at entry.

    - CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
      ``memory_allocated()`` at entry (synchronised at both ends).
    - CPU (Linux): the process' peak resident set size (``VmHWM``, reset to the current size
      through ``/proc/self/clear_refs``) minus the resident size at entry, after ``malloc_trim``
      has returned freed heap memory to the system. Where ``clear_refs`` cannot be written, a
      thread samples the resident size every 2 ms instead. tracemalloc would not see torch's
      allocations at all. Freed buffers that glibc keeps resident are reused without showing
      up: pin its mmap threshold (:data:`MMAP_THRESHOLD_ENV`) for per-call peaks.

    Args:
        device (str | torch.device): ``'cpu'``, ``'cuda'`` or ``'cuda:i'``.
    """

    def __init__(self, device: Union[str, torch.device]) -> None:
        self.device = torch.device(device)
        self.peak = None

    @staticmethod
    def _status(field: str) -> int:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f'no {field} in /proc/self/status')

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except OSError:
            pass
        self.base = self._status('VmRSS')
        self.sampled = 0
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # reset VmHWM to the current RSS
            self.use_hwm = True
        except OSError:  # not Linux, or not allowed: sample RSS in a thread instead
            self.use_hwm = False
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.sampled = max(self.sampled, self._status('VmRSS'))

    def __exit__(self, *exc) -> bool:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.use_hwm:
            self.peak = self._status('VmHWM') - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.sampled, self._status('VmRSS')) - self.base
        return False


class Stopwatch:
    """Wall time (seconds, in ``seconds``) of the code inside ``with``; on CUDA the device is
    synchronised at entry and exit, so queued kernels count where they run.

    Args:
        device (str | torch.device): Where the timed code runs.
    """

    def __init__(self, device: Union[str, torch.device]) -> None:
        self.device = torch.device(device)
        self.seconds = None

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> 'Stopwatch':
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self._sync()
        self.seconds = time.perf_counter() - self._start
        return False


def interleaved(calls: Mapping[str, Callable[[], T]], repeats: int,
                warmup: int = 0) -> Dict[str, List[T]]:
    """Run ``calls`` side by side: each ``warmup`` times first (untimed, results dropped), then
    ``repeats`` rounds of A B C ...; return every call's results, round by round.

    Args:
        calls (Mapping[str, Callable]): Named calls; each returns its own measurement (e.g. the
            seconds of a :class:`Stopwatch`).
        repeats (int): Rounds.
        warmup (int): Untimed calls of each first. Defaults to 0.

    Returns:
        dict[str, list]: ``{name: [result of round 1, ...]}``.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    results = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            results[name].append(call())
    return results


def timing_stats(seconds: Sequence[float]) -> Dict[str, object]:
    """``median_ms``, ``min_ms`` and every run's ``times_ms`` of timings in seconds."""
    return dict(median_ms=1e3 * statistics.median(seconds), min_ms=1e3 * min(seconds),
                times_ms=[1e3 * t for t in seconds])


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Set the environment variables of ``env`` inside the block, then restore them."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def device_name(device: Union[str, torch.device]) -> str:
    """The GPU's name on CUDA, the processor (or machine type) on the CPU."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


@dataclass
class Layer:
    """One neighborhood-attention layer shape: ``[1, H, W, heads, D]``, ``kernel``, ``dilation``."""
    name: str
    H: int
    W: int
    heads: int
    D: int = 32
    kernel: int = 7
    dilation: int = 1


def nat_tiny_layers(image_h: int, image_w: int) -> List[Layer]:
    """NAT-Tiny's four attention layer shapes (one per level: heads 2, 4, 8, 16, head dim 32,
    7x7) for an ``image_h x image_w`` input, named ``L<level + 1>@<H>x<W>``."""
    return [Layer(f'L{level + 1}@{image_h}x{image_w}', level_size(image_h, level),
                  level_size(image_w, level), 2 * 2 ** level) for level in range(4)]

"""Benchmark the NAT-Tiny backbone against a Swin-T backbone (mmdet's or timm's), side by side.

The backbones run in one process, interleaved (NAT, Swin, NAT, Swin, ...), so that machine
noise hits both alike; the table reports medians. Two modes: inference (``no_grad``, eval) and a
training step (train mode, forward + backward of a scalar over all four outputs).

Swin-T comes from mmdet (``--swin mmdet``, the default where mmdet imports, so that earlier
numbers stay comparable) or from timm alone (``--swin timm``, the default without mmdet: what
runs on a GPU machine without OpenMMLab): ``swin_tiny_patch4_window7_224``, the same
architecture, built for the input size (``img_size``; timm pads each stage's map to whole
windows) with ``features_only`` (its four stage outputs), random weights, no download.
``--nat-kernels triton tiled`` times NAT-Tiny once per NAT_MM_CUDA_KERNEL value (set around each
of its runs; one module, one set of weights), so the fused-attention backends are compared
inside the whole backbone.

Peak memory is the extra memory a run needs above what the process held before it:
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the run;
- CPU: the peak resident set size of the process (``VmHWM``, reset through
  ``/proc/self/clear_refs``, Linux) minus the resident size before the run, after returning
  freed heap memory to the OS with ``malloc_trim``. tracemalloc would not see torch's
  allocations at all.

Swin-T: embed_dims=96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7, mlp_ratio 4, the
mmdet Mask R-CNN Swin-T settings (timm's swin_tiny_patch4_window7_224 has the same);
NAT-Tiny: ``NAT(arch='tiny')``. Both with drop_path_rate 0.2.

Examples::

    python tools/benchmark_backbone.py                      # 800x1216, CPU
    python tools/benchmark_backbone.py --shape 224 320 --repeats 2 --json bench.json --plot
    python tools/benchmark_backbone.py --replot bench.json   # the chart of a saved run
    python tools/benchmark_backbone.py --device cuda --dtype float16
    python tools/benchmark_backbone.py --device cuda --dtype bfloat16 --swin timm \\
        --nat-kernels triton tiled          # tools/gpu/check.sh's backbone step
"""
import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nat_mm  # noqa: E402
from nat_mm.models import NAT  # noqa: E402

DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i] (default: cpu)')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'),
                        help='input height and width (default: 800 1216)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default: 1)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed runs per model and mode (default: 3)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed runs per model and mode first (default: 1)')
    parser.add_argument('--modes', nargs='+', choices=('infer', 'train'),
                        default=('infer', 'train'), help='what to run (default: both)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='autocast dtype; float32 means no autocast (default: float32)')
    parser.add_argument('--swin', choices=('auto', 'mmdet', 'timm'), default='auto',
                        help="Swin-T's implementation; auto: mmdet's where mmdet imports, else "
                        "timm's (default: auto)")
    parser.add_argument('--nat-kernels', nargs='+', default=None, metavar='KERNEL',
                        choices=('auto', 'triton', 'tiled', 'reference', 'flex'),
                        help='time NAT-Tiny once per NAT_MM_CUDA_KERNEL value (CUDA only; '
                        'default: one run, the variable as set)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads on CPU (default: torch default)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON here')
    parser.add_argument('--plot', action='store_true',
                        help='also draw a PNG chart beside the JSON (needs --json)')
    parser.add_argument('--replot', metavar='JSON', default=None,
                        help='only draw the chart of a saved JSON (beside it), run nothing')
    args = parser.parse_args(argv)
    if args.plot and not args.json:
        parser.error('--plot writes the chart beside the JSON: give --json PATH too')
    # argparse errors only (no nat_mm.mm.cli): this tool also runs where mmengine is absent
    if min(*args.shape, args.batch, args.repeats) < 1 or args.warmup < 0:
        parser.error(f'--shape, --batch and --repeats must be >= 1, --warmup >= 0, got '
                     f'--shape {args.shape[0]} {args.shape[1]} --batch {args.batch} --repeats '
                     f'{args.repeats} --warmup {args.warmup}')
    if args.replot and not Path(args.replot).is_file():
        parser.error(f'--replot {args.replot}: no such file (give the JSON of a saved run)')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if device.type not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    if args.nat_kernels and device.type != 'cuda':
        parser.error('--nat-kernels selects CUDA kernels (NAT_MM_CUDA_KERNEL): use --device cuda')
    if args.swin == 'auto':
        args.swin = 'mmdet' if importlib.util.find_spec('mmdet') is not None else 'timm'
    return args


def plot(json_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _plots import plot_backbone, png_beside

    png = plot_backbone(json.loads(Path(json_path).read_text()), png_beside(json_path))
    print(f'wrote {png}')
    return png


def build_mmdet_swin():
    from mmdet.models.backbones import SwinTransformer

    swin = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                           window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2,
                           patch_norm=True, out_indices=(0, 1, 2, 3), convert_weights=False)
    swin.init_weights()
    return swin


class _StageOutputs(torch.nn.Module):
    """A timm Swin without ``features_only`` support: its final feature map as the output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return [self.model.forward_features(x)]


def build_timm_swin(shape):
    """timm's Swin-T for inputs of ``shape`` (H, W): its four stage outputs (NHWC), random
    weights. timm 1.0 builds its attention masks for ``img_size`` and pads maps that are not a
    multiple of the window."""
    import timm

    kwargs = dict(pretrained=False, img_size=tuple(shape), drop_path_rate=0.2)
    try:
        return timm.create_model('swin_tiny_patch4_window7_224', features_only=True,
                                 out_indices=(0, 1, 2, 3), **kwargs)
    except (TypeError, RuntimeError, ValueError) as error:  # an older timm
        print(f'benchmark_backbone: timm Swin without features_only ({error}); timing '
              'forward_features', file=sys.stderr)
        return _StageOutputs(timm.create_model('swin_tiny_patch4_window7_224', num_classes=0,
                                               **kwargs))


def build_models(device, shape=(800, 1216), swin='mmdet', nat_kernels=None):
    """``{name: (module, env)}``: NAT-Tiny (once per NAT_MM_CUDA_KERNEL value of
    ``nat_kernels``, one module) and Swin-T; ``env`` is set around each run of the model."""
    torch.manual_seed(0)
    nat = NAT(arch='tiny', drop_path_rate=0.2)
    nat.init_weights()
    nat = nat.to(device)
    models = {}
    if nat_kernels:
        for kernel in nat_kernels:
            models[f'NAT-Tiny ({kernel})'] = (nat, {'NAT_MM_CUDA_KERNEL': kernel})
    else:
        models['NAT-Tiny'] = (nat, {})
    if swin == 'mmdet':
        models['Swin-T (mmdet)'] = (build_mmdet_swin().to(device), {})
    else:
        models['Swin-T (timm)'] = (build_timm_swin(shape).to(device), {})
    return models


@contextlib.contextmanager
def environment(env):
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


class PeakMemory:
    """Peak extra memory (bytes) of the code inside ``with`` (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = None

    @staticmethod
    def _status(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f'no {field} in /proc/self/status')

    def __enter__(self):
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

    def _sample(self):
        while not self._stop.wait(0.002):
            self.sampled = max(self.sampled, self._status('VmRSS'))

    def __exit__(self, *exc):
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


def run_once(model, x, mode, dtype, device, env=None):
    """One timed run (with the environment variables of ``env`` set); returns (seconds, peak
    extra bytes)."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    model.train(mode == 'train')
    with environment(env or {}), PeakMemory(device) as mem:
        start = time.perf_counter()
        with autocast:
            if mode == 'infer':
                with torch.no_grad():
                    outs = model(x)
            else:
                outs = model(x)
                sum(o.float().mean() for o in outs).backward()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        del outs
    model.zero_grad(set_to_none=True)
    return elapsed, mem.peak


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        plot(args.replot)
        return None
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    models = build_models(device, args.shape, args.swin, args.nat_kernels)
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    results = []
    for mode in args.modes:
        times = {name: [] for name in models}
        peaks = {name: [] for name in models}
        for name, (model, env) in models.items():
            for _ in range(args.warmup):
                run_once(model, x, mode, dtype, device, env)
        for _ in range(args.repeats):  # interleaved: A B A B ...
            for name, (model, env) in models.items():
                t, peak = run_once(model, x, mode, dtype, device, env)
                times[name].append(t)
                peaks[name].append(peak)
        for name in models:
            results.append(dict(
                model=name, mode=mode, median_ms=1e3 * statistics.median(times[name]),
                min_ms=1e3 * min(times[name]), times_ms=[1e3 * t for t in times[name]],
                peak_mb=max(peaks[name]) / 2**20))

    env = dict(device=str(device), device_name=(torch.cuda.get_device_name(device)
                                                if device.type == 'cuda' else platform.processor()
                                                or platform.machine()),
               threads=torch.get_num_threads(), dtype=args.dtype, shape=list(args.shape),
               batch=args.batch, repeats=args.repeats, warmup=args.warmup,
               torch=torch.__version__, nat_mm_compiled_ops=nat_mm.ops.extension_loaded(),
               swin=args.swin, nat_kernels=args.nat_kernels,
               command=' '.join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])))
    print(f"device={env['device']} ({env['device_name']}), threads={env['threads']}, "
          f"dtype={args.dtype}, input={args.batch}x3x{args.shape[0]}x{args.shape[1]}, "
          f"repeats={args.repeats}, compiled NA kernels={env['nat_mm_compiled_ops']}")
    header = f"{'model':<22}{'mode':<7}{'median ms':>11}{'min ms':>10}{'peak MB':>10}"
    print(header + f"{'vs Swin-T':>11}")
    print('-' * (len(header) + 11))
    for r in results:
        swin = next(s for s in results if s['mode'] == r['mode'] and s['model'].startswith('Swin'))
        ratio = r['median_ms'] / swin['median_ms']
        print(f"{r['model']:<22}{r['mode']:<7}{r['median_ms']:>11.1f}{r['min_ms']:>10.1f}"
              f"{r['peak_mb']:>10.1f}{ratio:>10.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, results=results), indent=2) + '\n')
        print(f'wrote {args.json}')
        if args.plot:
            plot(args.json)
    return results


if __name__ == '__main__':
    main()

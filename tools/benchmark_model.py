"""Benchmark whole detectors and segmentors (mmdet / mmseg configs) side by side.

Every model runs in one process, interleaved (A, B, A, B, ...), so that machine noise hits all of
them alike; the table reports medians. Two modes:

- ``infer``: as mmdet's ``tools/analysis_tools/benchmark.py``: the model in eval mode,
  ``model.test_step`` (data preprocessor, forward, post-processing) under ``no_grad`` on a batch
  of synthetic images of ``--shape`` (one image unless ``--batch``); reported as milliseconds per
  batch and images per second.
- ``train``: one ``model.train_step`` (preprocessor, losses, backward, optimizer step) with an
  optimizer wrapper built from the config's ``optim_wrapper``, on synthetic data samples: boxes
  and instance masks for detectors (``mmdet.testing.demo_mm_inputs``), random label maps for
  segmentors; the batch is the config's ``train_dataloader.batch_size`` (per GPU) unless
  ``--batch``.

Peak memory is the extra memory a run needs above what the process held before it, measured as in
``tools/benchmark_backbone.py``: CUDA ``max_memory_allocated``; on the CPU the peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size before the run.

Models are built from the configs with every ``Pretrained`` ``init_cfg`` and ``pretrained`` key
cleared (nothing is downloaded; random weights, ``init_weights()`` with seed 0) and SyncBN turned
into BN (one process). ``--amp`` runs both modes in fp16 autocast (``AmpOptimWrapper`` for
training, CUDA only); without it both run in fp32 whatever the config's ``optim_wrapper`` says.
For segmentors, ``--shape`` is also the training crop (``data_preprocessor.size``).

``--swin-baseline`` adds, for each config, a copy whose backbone is Swin-T (mmdet's or mmseg's
``SwinTransformer``: embed_dims 96, depths 2-2-6-2, heads 3-6-12-24, window 7, mlp_ratio 4,
drop_path_rate 0.2, same out_indices) with the neck's / heads' ``in_channels`` set to its widths
(96, 192, 384, 768); each model's ratios are then against the Swin copy of its own config.
Without it, ratios are against the first model of the same task.

Examples::

    python tools/benchmark_model.py configs/det/mask_rcnn_nat_tiny_3x.py --swin-baseline
    python tools/benchmark_model.py configs/seg/upernet_nat_tiny_160k.py \\
        configs/seg/upernet_dinat_tiny_160k.py --shape 512 512 --json seg.json
    python tools/benchmark_model.py configs/det/*_tiny_3x.py --device cuda --amp --batch 2
"""
import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))
import nat_mm  # noqa: E402,F401  registers NAT and DiNAT
from _common import task_of  # noqa: E402
from benchmark_backbone import PeakMemory  # noqa: E402
from mmengine.config import Config, ConfigDict  # noqa: E402

from nat_mm.mm.cli import DictAction, InputValueError, run  # noqa: E402
from nat_mm.mm.cli import load_config as load_user_config  # noqa: E402

# (H, W) when --shape is not given: mmdet's 1333x800 test scale rounded to a multiple of 32,
# and ADE20K's 512x512 crops.
DEFAULT_SHAPES = {'det': (800, 1216), 'seg': (512, 512)}
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
              mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
              drop_path_rate=0.2, patch_norm=True, with_cp=False, init_cfg=None)
SWIN_T_WIDTHS = (96, 192, 384, 768)
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='What is measured and how: see the header of tools/benchmark_model.py.')
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='mmdet or mmseg config files (ours or mmdet\'s/mmseg\'s)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: 800 1216 for detectors, 512 512 '
                        'for segmentors)')
    parser.add_argument('--batch', type=int, default=None,
                        help='images per batch (default: 1 for infer, as mmdet\'s benchmark; for '
                        'train the config\'s train_dataloader.batch_size, 2 in ours)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs per model and mode (default: 5)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed runs per model and mode first (default: 2)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i] (default: cpu)')
    parser.add_argument('--amp', action='store_true',
                        help='autocast (fp16 unless --amp-dtype) in both modes; CUDA only')
    parser.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default='float16',
                        help='autocast dtype with --amp (default: float16)')
    parser.add_argument('--modes', nargs='+', choices=('infer', 'train'),
                        default=('infer', 'train'), help='what to run (default: both)')
    parser.add_argument('--swin-baseline', action='store_true',
                        help='also run each config with a Swin-T backbone and compare with it')
    parser.add_argument('--num-boxes', type=int, default=8,
                        help='ground-truth instances per image for detectors (default: 8)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads on the CPU (default: torch default)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override settings of every config, e.g. '
                        'model.backbone.drop_path_rate=0.1')
    args = parser.parse_args(argv)
    if min(args.repeats, args.num_boxes) < 1 or args.warmup < 0 or (args.batch or 1) < 1:
        parser.error('--batch, --repeats and --num-boxes must be >= 1, --warmup >= 0')
    if args.shape is not None and min(args.shape) < 32:
        parser.error(f'--shape must be at least 32x32, got {args.shape[0]}x{args.shape[1]}')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    if device.type not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if args.amp and device.type != 'cuda':
        parser.error('--amp needs --device cuda (autocast and AmpOptimWrapper are for GPUs)')
    for path in args.configs:
        if not Path(path).is_file():
            parser.error(f'config not found: {path}')
    return args


# ------------------------------------------------------------------------------------ configs
def clear_pretrained(node) -> None:
    """Drop, in place, every ``Pretrained`` ``init_cfg`` and ``pretrained`` path in a config tree.

    Other initialisers (Kaiming, Normal, ...) stay: they cost nothing and download nothing.
    """
    if isinstance(node, dict):
        if isinstance(node.get('pretrained'), str):
            node['pretrained'] = None
        init_cfg = node.get('init_cfg')
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            node['init_cfg'] = None
        elif isinstance(init_cfg, (list, tuple)):
            kept = [c for c in init_cfg if not (isinstance(c, dict)
                                                and c.get('type') == 'Pretrained')]
            node['init_cfg'] = kept or None
        for value in node.values():
            clear_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            clear_pretrained(value)


def load_config(path: str, cfg_options: Optional[dict] = None,
                shape: Optional[Sequence[int]] = None) -> Config:
    """Load a config for benchmarking: options merged, no pretrained weights, seg crop = shape.

    Raises:
        InputValueError: (a ``ValueError``) the config is neither an mmdet nor an mmseg config,
            or the options do not fit it.
        InputNotFoundError: the config (or a ``_base_`` of it) does not exist.
    """
    cfg = load_user_config(path, cfg_options)  # imports custom_imports (nat_mm) itself
    task = task_of(cfg)
    cfg.model.get('backbone', {})['init_cfg'] = None
    clear_pretrained(cfg._cfg_dict)
    shape = tuple(shape or DEFAULT_SHAPES[task])
    preprocessor = cfg.model.get('data_preprocessor')
    if task == 'seg' and preprocessor is not None and preprocessor.get('size') is not None:
        preprocessor['size'] = shape  # train at --shape, not at the config's 512x512 crop
    return cfg


def _set_in_channels(node: dict, where: str, out_indices: Sequence[int]) -> None:
    """Point one neck's / head's ``in_channels`` at Swin-T's widths (backbone outputs in order)."""
    widths = [SWIN_T_WIDTHS[i] for i in out_indices]
    in_channels, in_index = node.get('in_channels'), node.get('in_index')
    try:
        if isinstance(in_channels, (list, tuple)):
            if in_index is None:
                if len(in_channels) != len(widths):
                    raise IndexError
                node['in_channels'] = widths
            else:
                node['in_channels'] = [widths[i] for i in in_index]
        elif isinstance(in_channels, int) and isinstance(in_index, int):
            node['in_channels'] = widths[in_index]
        else:
            raise IndexError
    except (IndexError, TypeError):
        raise InputValueError(
            f'cannot point {where}.in_channels={in_channels!r} (in_index={in_index!r}) at a '
            f'Swin-T backbone with out_indices {tuple(out_indices)}') from None


def swin_baseline(cfg: Config) -> Config:
    """A copy of ``cfg`` whose backbone is Swin-T (see the module docstring).

    The backbone is mmdet's ``SwinTransformer`` for mmdet configs and mmseg's for mmseg configs;
    ``model.neck`` (or the first of a list of necks), ``model.decode_head`` and
    ``model.auxiliary_head`` get Swin-T's channel widths for the backbone's ``out_indices``.

    Raises:
        ValueError: a neck or head whose ``in_channels`` cannot be mapped to Swin-T's widths.
    """
    task = task_of(cfg)
    swin = copy.deepcopy(cfg)
    model = swin.model
    out_indices = tuple(model.backbone.get('out_indices', (0, 1, 2, 3)))
    if not out_indices or not set(out_indices) <= set(range(4)):
        raise InputValueError(f'backbone out_indices {out_indices} are not Swin-T levels 0-3')
    backbone = dict(SWIN_T, out_indices=out_indices)
    if task == 'det':
        backbone.update(type='mmdet.SwinTransformer', convert_weights=False)
    else:
        backbone.update(type='mmseg.SwinTransformer', pretrained=None)
    model.backbone = ConfigDict(backbone)
    model.pop('pretrained', None)
    for key in ('neck', 'decode_head', 'auxiliary_head'):
        node = model.get(key)
        nodes = node if isinstance(node, (list, tuple)) else [node]
        if key == 'neck':
            nodes = nodes[:1]  # later necks read the first neck's outputs
        for i, sub in enumerate(nodes):
            if isinstance(sub, dict) and 'in_channels' in sub:
                name = f'model.{key}' + (f'[{i}]' if isinstance(node, (list, tuple)) else '')
                _set_in_channels(sub, name, out_indices)
    return swin


# ------------------------------------------------------------------------------ models, data
def build_model(cfg: Config, device: torch.device):
    """Build the model of ``cfg`` in its own registry, seed 0, ``init_weights()``, BN for SyncBN."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope

    init_default_scope(cfg.default_scope)
    if task_of(cfg) == 'det':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return revert_sync_batchnorm(model).to(device)


def build_optim_wrapper(model, cfg: Config, amp: bool, amp_dtype: str):
    """The config's ``optim_wrapper`` as ``OptimWrapper`` (fp32) or ``AmpOptimWrapper`` (--amp)."""
    from mmengine.optim import build_optim_wrapper as build

    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    for key in ('loss_scale', 'dtype', 'use_fsdp'):
        optim_cfg.pop(key, None)
    if amp:
        optim_cfg.update(type='AmpOptimWrapper', loss_scale='dynamic', dtype=amp_dtype)
    else:
        optim_cfg.type = 'OptimWrapper'
    return build(model, optim_cfg)


def _num_classes(model_cfg: dict, task: str) -> int:
    """Classes of the (first) box or decode head; 80 (COCO) / 150 (ADE20K) if none is found."""
    if task == 'seg':
        return int(model_cfg.get('decode_head', {}).get('num_classes', 150))
    for head in (model_cfg.get('roi_head', {}).get('bbox_head'), model_cfg.get('bbox_head')):
        head = head[0] if isinstance(head, (list, tuple)) else head
        if isinstance(head, dict) and isinstance(head.get('num_classes'), int):
            return head['num_classes']
    return 80


def synthetic_batch(task: str, batch: int, shape: Sequence[int], num_classes: int,
                    num_boxes: int) -> dict:
    """A data batch as a dataloader yields it: uint8 images and data samples with targets."""
    h, w = shape
    if task == 'det':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch_size=batch, image_shapes=[(3, h, w)] * batch,
                              num_items=[num_boxes] * batch, num_classes=num_classes,
                              with_mask=True)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, h, w), generator=gen))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
              for _ in range(batch)]
    return dict(inputs=inputs, data_samples=samples)


class Entry:
    """One model under test: its config, the built model, optimizer wrapper and data."""

    def __init__(self, name: str, config: str, cfg: Config, args, device: torch.device):
        self.name, self.config, self.cfg = name, config, cfg
        self.task = task_of(cfg)
        self.shape = tuple(args.shape or DEFAULT_SHAPES[self.task])
        self.backbone = str(cfg.model.backbone.type)
        self.baseline = name
        self.model = build_model(cfg, device)
        self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.optim_wrapper = (build_optim_wrapper(self.model, cfg, args.amp, args.amp_dtype)
                              if 'train' in args.modes else None)
        train_batch = cfg.get('train_dataloader', {}).get('batch_size', 2)
        self.batch = dict(infer=args.batch or 1, train=args.batch or train_batch)
        num_classes = _num_classes(cfg.model, self.task)
        self.data = {mode: synthetic_batch(self.task, self.batch[mode], self.shape, num_classes,
                                           args.num_boxes) for mode in args.modes}


def run_once(entry: Entry, mode: str, device: torch.device, autocast_dtype) -> tuple:
    """One timed ``test_step`` or ``train_step``; returns (seconds, peak extra bytes)."""
    data = copy.deepcopy(entry.data[mode])  # the preprocessor pads and moves samples in place
    entry.model.train(mode == 'train')
    with PeakMemory(device) as mem:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if mode == 'infer':
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype,
                                                 enabled=autocast_dtype is not None):
                out = entry.model.test_step(data)
        else:
            try:
                out = entry.model.train_step(data, entry.optim_wrapper)
            except ValueError as error:
                if 'more than 1 value per channel' not in str(error):
                    raise
                raise InputValueError(
                    f'{entry.name}: training with {entry.batch[mode]} image per batch fails in a '
                    f'BatchNorm layer ({error}); use --batch 2 or more') from None
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        del out
    return elapsed, mem.peak


# ---------------------------------------------------------------------------------- main
def build_entries(args, device: torch.device) -> List[Entry]:
    entries = []
    names = set()
    for config in args.configs:
        cfg = load_config(config, args.cfg_options, args.shape)
        name = Path(config).stem
        while name in names:
            name += "'"
        names.add(name)
        entry = Entry(name, config, cfg, args, device)
        entries.append(entry)
        if args.swin_baseline:
            swin = Entry(f'{name} [Swin-T]', config, swin_baseline(cfg), args, device)
            entry.baseline = swin.name
            entries.append(swin)
    if not args.swin_baseline:
        first = {}
        for entry in entries:
            entry.baseline = first.setdefault(entry.task, entry.name)
    return entries


def benchmark(entries: List[Entry], args, device: torch.device) -> List[Dict]:
    autocast_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
    results = []
    for mode in args.modes:
        times: Dict[str, List[float]] = {e.name: [] for e in entries}
        peaks: Dict[str, List[int]] = {e.name: [] for e in entries}
        for entry in entries:
            for _ in range(args.warmup):
                run_once(entry, mode, device, autocast_dtype)
        for _ in range(args.repeats):  # interleaved: A B A B ...
            for entry in entries:
                seconds, peak = run_once(entry, mode, device, autocast_dtype)
                times[entry.name].append(seconds)
                peaks[entry.name].append(peak)
        for entry in entries:
            median = statistics.median(times[entry.name])
            results.append(dict(
                model=entry.name, mode=mode, median_ms=1e3 * median,
                min_ms=1e3 * min(times[entry.name]),
                times_ms=[1e3 * t for t in times[entry.name]],
                batch=entry.batch[mode], images_per_s=entry.batch[mode] / median,
                peak_mb=max(peaks[entry.name]) / 2**20, baseline=entry.baseline))
    by_key = {(r['model'], r['mode']): r for r in results}
    for r in results:
        base = by_key[(r['baseline'], r['mode'])]
        r['time_ratio'] = r['median_ms'] / base['median_ms']
        r['peak_ratio'] = r['peak_mb'] / base['peak_mb'] if base['peak_mb'] > 0 else None
    return results


def _versions() -> Dict[str, str]:
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    return dict(torch=torch.__version__, mmengine=mmengine.__version__, mmcv=mmcv.__version__,
                mmdet=mmdet.__version__, mmseg=mmseg.__version__)


def print_table(entries: List[Entry], results: List[Dict], env: Dict) -> None:
    print(f"device={env['device']} ({env['device_name']}), threads={env['threads']}, "
          f"amp={env['amp']}, repeats={env['repeats']}, "
          f"warmup={env['warmup']}, compiled NA kernels={env['nat_mm_compiled_ops']}")
    shapes = {e.name: e.shape for e in entries}
    params = {e.name: e.params_m for e in entries}
    width = max(len('model'), *(len(e.name) for e in entries)) + 2
    header = (f"{'model':<{width}}{'mode':<7}{'input':>12}{'params M':>10}{'median ms':>11}"
              f"{'min ms':>10}{'img/s':>9}{'peak MB':>10}{'time vs':>9}{'mem vs':>8}  baseline")
    print(header)
    print('-' * len(header))
    for r in results:
        h, w = shapes[r['model']]
        peak_ratio = f"{r['peak_ratio']:.2f}x" if r['peak_ratio'] is not None else '-'
        base = '' if r['baseline'] == r['model'] else r['baseline']
        size = f"{r['batch']}x{h}x{w}"
        print(f"{r['model']:<{width}}{r['mode']:<7}{size:>12}{params[r['model']]:>10.1f}"
              f"{r['median_ms']:>11.1f}{r['min_ms']:>10.1f}{r['images_per_s']:>9.2f}"
              f"{r['peak_mb']:>10.1f}{r['time_ratio']:>8.2f}x{peak_ratio:>8}  {base}")


def main(argv=None):
    args = parse_args(argv)
    from mmengine.logging import MMLogger
    # The latest MMLogger is mmengine's 'current' one: keep init and paramwise logs quiet.
    MMLogger.get_instance('benchmark_model', log_level='WARNING')
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = build_entries(args, device)
    results = benchmark(entries, args, device)
    env = dict(device=str(device),
               device_name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                            else platform.processor() or platform.machine()),
               threads=torch.get_num_threads(), amp=args.amp and args.amp_dtype,
               repeats=args.repeats, warmup=args.warmup, modes=list(args.modes),
               nat_mm_compiled_ops=nat_mm.ops.extension_loaded(), **_versions(),
               command=' '.join([Path(sys.argv[0]).name] + list(
                   sys.argv[1:] if argv is None else argv)))
    models = [dict(name=e.name, config=e.config, task=e.task, backbone=e.backbone,
                   input_shape=list(e.shape), params_m=e.params_m, baseline=e.baseline)
              for e in entries]
    print_table(entries, results, env)
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(env=env, models=models, results=results), indent=2) + '\n')
        print(f'wrote {args.json}')
    return results


if __name__ == '__main__':
    run(main)

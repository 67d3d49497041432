"""Whole detectors and segmentors (mmdet / mmseg configs) benchmarked side by side, for
tools/benchmark_model.py (whose header says what is measured and how).

Every model runs in one process, interleaved (A, B, A, B, ...); ``infer`` is
``model.test_step`` under ``no_grad`` (as mmdet's ``tools/analysis_tools/benchmark.py``),
``train`` one ``model.train_step`` with the config's optimizer wrapper, on synthetic batches
(:func:`nat_mm.mm.data.synthetic_batch`). Peak memory: :class:`nat_mm.utils.benchmark.PeakMemory`.
Models are built with every ``Pretrained`` initialiser cleared (:func:`load_benchmark_config`),
random weights from ``init_weights()`` with seed 0, SyncBN as BN. :func:`swin_baseline` swaps a
config's backbone for Swin-T (mmdet's or mmseg's ``SwinTransformer``: embed_dims 96, depths
2-2-6-2, heads 3-6-12-24, window 7, mlp_ratio 4, drop_path_rate 0.2, same out_indices) with the
neck's / heads' ``in_channels`` set to its widths (96, 192, 384, 768).
"""
import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import Config, ConfigDict

from ..utils.benchmark import PeakMemory, Stopwatch, interleaved, timing_stats
from .build import build_model, clear_pretrained, task_of
from .cli import InputValueError, load_config
from .data import synthetic_batch

__all__ = ['DEFAULT_SHAPES', 'SWIN_T', 'SWIN_T_WIDTHS', 'AMP_DTYPES', 'load_benchmark_config',
           'swin_baseline', 'build_optim_wrapper', 'Entry', 'run_once', 'build_entries',
           'benchmark', 'versions', 'print_table']

# (H, W) when --shape is not given: mmdet's 1333x800 test scale rounded to a multiple of 32,
# and ADE20K's 512x512 crops.
DEFAULT_SHAPES = {'det': (800, 1216), 'seg': (512, 512)}
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
              mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
              drop_path_rate=0.2, patch_norm=True, with_cp=False, init_cfg=None)
SWIN_T_WIDTHS = (96, 192, 384, 768)
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


def load_benchmark_config(path: str, cfg_options: Optional[dict] = None,
                          shape: Optional[Sequence[int]] = None) -> Config:
    """Load a config for benchmarking: options merged, no pretrained weights, seg crop = shape.

    Raises:
        InputValueError: (a ``ValueError``) the config is neither an mmdet nor an mmseg config,
            or the options do not fit it.
        InputNotFoundError: the config (or a ``_base_`` of it) does not exist.
    """
    cfg = load_config(path, cfg_options)  # imports custom_imports (nat_mm) itself
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


class Entry:
    """One model under test: its config, the built model, optimizer wrapper and data.

    Args:
        name (str): Its name in the table.
        config (str): The config file.
        cfg (Config): The loaded config (:func:`load_benchmark_config` or
            :func:`swin_baseline`).
        device (torch.device): Where it runs.
        shape (Sequence[int], optional): ``(H, W)``; None: :data:`DEFAULT_SHAPES` of its task.
        batch (int, optional): Images per batch; None: 1 for infer (as mmdet's benchmark), the
            config's ``train_dataloader.batch_size`` (2 if unset) for train.
        modes (Sequence[str]): ``'infer'`` and/or ``'train'``. Defaults to both.
        amp (bool): ``AmpOptimWrapper`` for training. Defaults to False.
        amp_dtype (str): Its dtype. Defaults to 'float16'.
        num_boxes (int): Ground-truth instances per image for detectors. Defaults to 8.
    """

    def __init__(self, name: str, config: str, cfg: Config, device: torch.device,
                 shape: Optional[Sequence[int]] = None, batch: Optional[int] = None,
                 modes: Sequence[str] = ('infer', 'train'), amp: bool = False,
                 amp_dtype: str = 'float16', num_boxes: int = 8):
        self.name, self.config, self.cfg = name, config, cfg
        self.task = task_of(cfg)
        self.shape = tuple(shape or DEFAULT_SHAPES[self.task])
        self.backbone = str(cfg.model.backbone.type)
        self.baseline = name
        self.model = build_model(cfg, init_weights=True, seed=0, device=device)
        self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.optim_wrapper = (build_optim_wrapper(self.model, cfg, amp, amp_dtype)
                              if 'train' in modes else None)
        train_batch = cfg.get('train_dataloader', {}).get('batch_size', 2)
        self.batch = dict(infer=batch or 1, train=batch or train_batch)
        num_classes = _num_classes(cfg.model, self.task)
        self.data = {mode: synthetic_batch(self.task, self.batch[mode], self.shape, num_classes,
                                           num_boxes) for mode in modes}


def run_once(entry: Entry, mode: str, device: torch.device, autocast_dtype) -> tuple:
    """One timed ``test_step`` or ``train_step``; returns (seconds, peak extra bytes)."""
    data = copy.deepcopy(entry.data[mode])  # the preprocessor pads and moves samples in place
    entry.model.train(mode == 'train')
    with PeakMemory(device) as mem, Stopwatch(device) as watch:
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
        del out
    return watch.seconds, mem.peak


def build_entries(configs: Sequence[str], device: torch.device,
                  cfg_options: Optional[dict] = None, swin: bool = False,
                  **entry_kwargs) -> List[Entry]:
    """An :class:`Entry` per config (``entry_kwargs`` go to each), and with ``swin`` its Swin-T
    copy (:func:`swin_baseline`) as its baseline; without, each entry's baseline is the first
    entry of its task. Names are the config stems (primed when repeated)."""
    entries = []
    names = set()
    shape = entry_kwargs.get('shape')
    for config in configs:
        cfg = load_benchmark_config(config, cfg_options, shape)
        name = Path(config).stem
        while name in names:
            name += "'"
        names.add(name)
        entry = Entry(name, config, cfg, device, **entry_kwargs)
        entries.append(entry)
        if swin:
            baseline = Entry(f'{name} [Swin-T]', config, swin_baseline(cfg), device,
                             **entry_kwargs)
            entry.baseline = baseline.name
            entries.append(baseline)
    if not swin:
        first = {}
        for entry in entries:
            entry.baseline = first.setdefault(entry.task, entry.name)
    return entries


def benchmark(entries: List[Entry], modes: Sequence[str], device: torch.device, repeats: int,
              warmup: int, autocast_dtype: Optional[torch.dtype] = None) -> List[Dict]:
    """Every entry in every mode, interleaved (``warmup`` untimed runs each, then ``repeats``
    rounds A B A B ...); one result per (model, mode) with medians, images per second, the
    peak extra memory and the ratios to the entry's baseline."""
    results = []
    for mode in modes:
        calls = {e.name: (lambda e=e: run_once(e, mode, device, autocast_dtype)) for e in entries}
        runs = interleaved(calls, repeats, warmup)
        for entry in entries:
            stats = timing_stats([seconds for seconds, _ in runs[entry.name]])
            median = stats['median_ms'] / 1e3
            results.append(dict(
                model=entry.name, mode=mode, **stats,
                batch=entry.batch[mode], images_per_s=entry.batch[mode] / median,
                peak_mb=max(peak for _, peak in runs[entry.name]) / 2**20,
                baseline=entry.baseline))
    by_key = {(r['model'], r['mode']): r for r in results}
    for r in results:
        base = by_key[(r['baseline'], r['mode'])]
        r['time_ratio'] = r['median_ms'] / base['median_ms']
        r['peak_ratio'] = r['peak_mb'] / base['peak_mb'] if base['peak_mb'] > 0 else None
    return results


def versions() -> Dict[str, str]:
    """The versions of torch and the OpenMMLab packages."""
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    return dict(torch=torch.__version__, mmengine=mmengine.__version__, mmcv=mmcv.__version__,
                mmdet=mmdet.__version__, mmseg=mmseg.__version__)


def print_table(entries: List[Entry], results: List[Dict], env: Dict) -> None:
    """The results of :func:`benchmark` as a table, with the run's settings (``env``) first."""
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

"""The backbone benchmark of tools/benchmark_backbone.py: NAT-Tiny against Swin-T, side by side
(torch and timm; mmdet's Swin only when asked for).

The backbones run in one process, interleaved (NAT, Swin, NAT, Swin, ...), in two modes:
inference (``no_grad``, eval) and a training step (train mode, forward + backward of a scalar
over all four outputs); every run also reports its peak extra memory
(:class:`nat_mm.utils.benchmark.PeakMemory`).

Swin-T comes from mmdet (:func:`build_mmdet_swin`) or from timm alone (:func:`build_timm_swin`:
``swin_tiny_patch4_window7_224``, the same architecture, built for the input size, random
weights, no download). Both: embed_dims=96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window
7, mlp_ratio 4, drop_path_rate 0.2; NAT-Tiny is ``NAT(arch='tiny', drop_path_rate=0.2)``.
"""
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..models import NAT
from .benchmark import PeakMemory, Stopwatch, environment, interleaved, timing_stats

__all__ = ['DTYPES', 'build_mmdet_swin', 'build_timm_swin', 'build_models', 'run_once',
           'benchmark_backbones']

#: ``--dtype`` -> autocast dtype (None: no autocast).
DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def build_mmdet_swin() -> nn.Module:
    """mmdet's ``SwinTransformer`` with the Mask R-CNN Swin-T settings, ``init_weights()``."""
    from mmdet.models.backbones import SwinTransformer

    swin = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                           window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2,
                           patch_norm=True, out_indices=(0, 1, 2, 3), convert_weights=False)
    swin.init_weights()
    return swin


class _StageOutputs(nn.Module):
    """A timm Swin without ``features_only`` support: its final feature map as the output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return [self.model.forward_features(x)]


def build_timm_swin(shape: Sequence[int]) -> nn.Module:
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


def build_models(device, shape=(800, 1216), swin: str = 'mmdet',
                 nat_kernels: Optional[Sequence[str]] = None
                 ) -> Dict[str, Tuple[nn.Module, Dict[str, str]]]:
    """``{name: (module, env)}``: NAT-Tiny (once per NAT_MM_CUDA_KERNEL value of
    ``nat_kernels``, one module) and Swin-T (``swin``: ``'mmdet'`` or ``'timm'``); ``env`` is
    set around each run of the model. Seed 0."""
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


def run_once(model: nn.Module, x: torch.Tensor, mode: str, dtype, device,
             env: Optional[Dict[str, str]] = None) -> Tuple[float, int]:
    """One timed run (with the environment variables of ``env`` set); returns (seconds, peak
    extra bytes).

    Args:
        mode (str): ``'infer'`` (eval, ``no_grad``) or ``'train'`` (train mode, backward of the
            mean of every output).
        dtype (torch.dtype, optional): Autocast dtype; None runs without autocast.
    """
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    model.train(mode == 'train')
    with environment(env or {}), PeakMemory(device) as mem:
        with Stopwatch(device) as watch, autocast:
            if mode == 'infer':
                with torch.no_grad():
                    outs = model(x)
            else:
                outs = model(x)
                sum(o.float().mean() for o in outs).backward()
        del outs
    model.zero_grad(set_to_none=True)
    return watch.seconds, mem.peak


def benchmark_backbones(models: Dict[str, Tuple[nn.Module, Dict[str, str]]], x: torch.Tensor,
                        modes: Sequence[str], dtype, device, repeats: int,
                        warmup: int) -> List[dict]:
    """Every model of :func:`build_models` in every mode, interleaved: ``warmup`` untimed runs
    each, then ``repeats`` rounds. One result per (model, mode): ``model``, ``mode``,
    ``median_ms``, ``min_ms``, ``times_ms`` and ``peak_mb`` (the largest peak of the runs)."""
    results = []
    for mode in modes:
        calls = {name: (lambda model=model, env=env: run_once(model, x, mode, dtype, device, env))
                 for name, (model, env) in models.items()}
        runs = interleaved(calls, repeats, warmup)
        for name in models:
            seconds = [t for t, _ in runs[name]]
            results.append(dict(model=name, mode=mode, **timing_stats(seconds),
                                peak_mb=max(peak for _, peak in runs[name]) / 2**20))
    return results

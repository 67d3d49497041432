"""Export a NAT/DiNAT model to ONNX, with neighborhood attention in standard ONNX ops.

What is exported:
- a segmentor (UPerNet, any mmseg ``EncoderDecoder``): its tensor-mode output, the decode
  head's logits ``[1, classes, H/4, W/4]`` for a preprocessed (normalised, padded) image
  ``[1, 3, H, W]``; the data preprocessor and the final resize are not part of it;
- with ``--backbone`` (any config, detectors included): the backbone alone, its four NCHW maps
  as outputs ``level0`` .. ``level3`` in order.

How: ``torch.export`` with dynamic H and W (the compiled ``nat_mm::`` ops stay single nodes,
their fake kernels carry the symbolic shapes), then ``run_decompositions`` with
:func:`nat_mm.ops.export_decompositions`, which swaps those nodes for the pure-PyTorch path
(gather + einsum + softmax: the maths is written once, in ``nat_mm/ops/_torch_impl.py``), then
``torch.onnx.export(dynamo=True)`` and a light optimization (``--optimize``). The file is
checked with onnxruntime against the eager model at the export size and at a second size
(``--check-shape``); the max abs differences are printed.

H and W are dynamic within a range: layers whose map is smaller than kernel * dilation are
zero-padded (DESIGN.md section 3), and a program covers the sizes where every layer pads or
does not pad as it did at ``--shape``. The range is printed (e.g. NAT at 200x250: H, W >= 193).
A segmentor with adaptive pooling (UPerNet's PPM) is further limited to the sizes whose
stride-32 map has the example's size (ONNX has no adaptive pooling; its decomposition is laid out
for one input size): e.g. 120x136 covers H in [97, 128], W in [129, 160].

Without CHECKPOINT the model gets the config's own initialisation. Detectors cannot be exported
whole here (RoI ops, NMS, per-image outputs): use ``--backbone``, or mmdeploy for the detector.

Examples:
    python tools/export_onnx.py configs/seg/demo_upernet_nat_mini.py ckpt.pth --shape 120 136 \\
        --out upernet.onnx
    python tools/export_onnx.py configs/det/mask_rcnn_dinat_tiny_3x.py --shape 800 1216 \\
        --backbone --out dinat_tiny.onnx
"""
import argparse
import math
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.export import Dim

from nat_mm.ops import export_decompositions

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _models import load_model  # noqa: E402
from nat_mm.mm.cli import DictAction, ModelTypeError, positive_int, run  # noqa: E402

MMDEPLOY = 'https://github.com/open-mmlab/mmdeploy'


class ExportError(ModelTypeError, RuntimeError):
    """A model this tool cannot export, with the reason and what to do instead (a user-input
    error: :func:`nat_mm.mm.cli.run` prints it as one line)."""


class BackboneOutputs(torch.nn.Module):
    """The backbone alone: ``image -> (level0, level1, level2, level3)``."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.backbone(inputs))


class TensorMode(torch.nn.Module):
    """A segmentor's tensor mode: ``model(inputs, mode='tensor')``, the decode head's logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs, mode='tensor')


def exportable(model: torch.nn.Module, backbone: bool) -> Tuple[torch.nn.Module, List[str]]:
    """The module to export and its output names.

    Raises:
        ExportError: a model that is not a segmentor without ``--backbone``, or a model without
            a backbone.
    """
    name = type(model).__name__
    if backbone:
        if not hasattr(model, 'backbone'):
            raise ExportError(f'--backbone: {name} has no `backbone` attribute')
        module = BackboneOutputs(model.backbone).eval()
        outs = getattr(model.backbone, 'out_indices', range(4))
        return module, [f'level{i}' for i in outs]
    from mmseg.models.segmentors import EncoderDecoder
    if isinstance(model, EncoderDecoder):
        return TensorMode(model).eval(), ['seg_logits']
    raise ExportError(
        f'export_onnx: cannot export the whole {name}: only segmentors (mmseg EncoderDecoder, '
        f'e.g. UPerNet) are exported whole. A detector such as Mask R-CNN needs RoI ops '
        f'(RoIAlign, NMS in the RPN and the RoI head) and per-image, data-dependent outputs, '
        f'which this exporter does not map to ONNX. Export the backbone with --backbone, or use '
        f'mmdeploy ({MMDEPLOY}) for the full detector, with the NAT backbone exported as here.')


def torch_export(module: torch.nn.Module, example: torch.Tensor):
    """``torch.export`` with dynamic H and W; the ``nat_mm::`` ops stay as they are."""
    with torch.no_grad():
        return torch.export.export(module, (example, ),
                                   dynamic_shapes=({2: Dim.AUTO, 3: Dim.AUTO}, ))


def padding_range(backbone: torch.nn.Module, length: int) -> Tuple[int, float]:
    """The input lengths around ``length`` at which every NA layer of ``backbone`` pads (or
    does not pad) its map exactly as at ``length`` (a map of ceil(L / stride) < k * d tokens is
    padded), as ``(min, max)``; ``max`` is inf when no layer pads at ``length`` or above."""
    k = backbone.kernel_size
    layers = [(4 * 2 ** i, k * d) for i, level in enumerate(backbone.dilations) for d in level]

    def pattern(L):
        return tuple(-(-L // stride) < window for stride, window in layers)

    same = pattern(length)
    lo = length
    while lo > 1 and pattern(lo - 1) == same:
        lo -= 1
    if not any(same):
        return lo, math.inf
    hi = length
    while pattern(hi + 1) == same:
        hi += 1
    return lo, hi


def has_adaptive_pooling(module: torch.nn.Module) -> bool:
    """Whether ``module`` pools to a fixed size other than 1 (UPerNet's PPM: 1, 2, 3, 6)."""
    for m in module.modules():
        if isinstance(m, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, ) * 2
            if any(s not in (1, None) for s in size):
                return True
    return False


def dynamic_ranges(ep, backbone: Optional[torch.nn.Module] = None,
                   shape: Optional[Tuple[int, int]] = None,
                   pooled: bool = False) -> Dict[str, Tuple[int, float]]:
    """The ``(min, max)`` of the input's H and W that the exported program is valid for.

    ``ep.range_constraints`` holds the bounds torch.export derived; the padding decisions are
    guards that ``ep.module()`` checks at run time but that an ONNX file cannot, so with the NAT
    ``backbone`` and the example ``shape`` the range is narrowed to :func:`padding_range`, and
    with ``pooled`` (adaptive pooling, see :func:`has_adaptive_pooling`) to the sizes that give
    the coarsest map the example's size.
    """
    placeholder = next(n for n in ep.graph.nodes
                       if n.op == 'placeholder' and n.name in ep.graph_signature.user_inputs)
    sizes = placeholder.meta['val'].shape
    ranges = {}
    for n, axis in ((0, 'H'), (1, 'W')):
        size = sizes[2 + n]
        if isinstance(size, int):
            ranges[axis] = (size, size)
            continue
        vr = ep.range_constraints[size.node.expr]
        lo = int(vr.lower)
        try:
            hi = int(vr.upper)
        except (OverflowError, AttributeError, TypeError):  # unbounded: torch's int_oo
            hi = math.inf
        if backbone is not None and shape is not None and hasattr(backbone, 'dilations'):
            plo, phi = padding_range(backbone, shape[n])
            lo, hi = max(lo, plo), min(hi, phi)
            if pooled:
                # ONNX has no adaptive pooling: its decomposition holds the window layout of the
                # example's coarsest map (ceil(L / stride)), valid only while that size stays.
                stride = 4 * 2 ** (backbone.num_levels - 1)
                m = -(-shape[n] // stride)
                lo, hi = max(lo, stride * (m - 1) + 1), min(hi, stride * m)
        ranges[axis] = (lo, hi)
    return ranges


def basic_optimize(model) -> None:
    """Constant folding, dead-node removal and common subexpressions, in place on an
    ``onnx_ir`` model: the cheap part of what ``torch.onnx.export(optimize=True)`` does.

    The rest of it, onnxscript's pattern rewriter (``--optimize full``), tries every rule at
    every node; on the thousands of index nodes of the decomposed neighborhood attention it took
    6 of the 9 minutes of a profiled DiNAT-Mini backbone export here. Without it that export
    took 78 s; the file had 3901 nodes instead of 1872 and ran in onnxruntime within the noise
    of the optimized one (1.16 vs 1.11 s at 100x140 on this 2-core CPU)."""
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    fold_constants_ir(model)
    for step in (common.RemoveUnusedNodesPass(), common.CommonSubexpressionEliminationPass(),
                 common.RemoveUnusedNodesPass(), common.DeduplicateInitializersPass()):
        step(model)


def export_onnx(module: torch.nn.Module, example: torch.Tensor, out: str,
                output_names: Sequence[str], opset: Optional[int] = None,
                optimize: str = 'basic'):
    """torch.export -> decompose the NA ops -> ONNX file at ``out``; returns the program.

    ``optimize``: ``'basic'`` (:func:`basic_optimize`) or ``'full'`` (torch's default
    optimizer, onnxscript's rewriter included)."""
    if optimize not in ('basic', 'full'):
        raise ValueError(f"optimize must be 'basic' or 'full', got {optimize!r}")
    ep = torch_export(module, example)
    ep = ep.run_decompositions(export_decompositions())
    leftover = sorted({str(n.target) for n in ep.graph.nodes
                       if n.op == 'call_function' and 'nat_mm' in str(n.target)})
    if leftover:  # a bug: every nat_mm op has a decomposition
        raise RuntimeError(f'export_onnx: no decomposition for {leftover}')
    program = torch.onnx.export(ep, (example, ), dynamo=True, input_names=['inputs'],
                                output_names=list(output_names), opset_version=opset,
                                optimize=optimize == 'full', verbose=False)
    if optimize == 'basic':
        basic_optimize(program.model)
    program.save(out, external_data=False)
    return ep


def check_with_onnxruntime(path: str, module: torch.nn.Module,
                           shapes: Sequence[Tuple[int, int]], seed: int = 0) -> List[dict]:
    """Run the ONNX file with onnxruntime and the eager module on random inputs of each
    ``(H, W)``; return one row per size with the max abs difference of every output."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for H, W in shapes:
        x = torch.randn(1, 3, H, W, generator=gen)
        with torch.no_grad():
            eager = module(x)
        eager = [eager] if isinstance(eager, torch.Tensor) else list(eager)
        got = session.run(None, {input_name: x.numpy()})
        diffs = {name: float(np.abs(g - e.numpy()).max()) for name, g, e in zip(names, got, eager)}
        shapes_out = {name: list(g.shape) for name, g in zip(names, got)}
        rows.append(dict(shape=(H, W), max_abs_diff=diffs, output_shapes=shapes_out))
    return rows


def default_check_shape(shape: Tuple[int, int], ranges) -> Tuple[int, int]:
    """A second size inside the program's range, different from ``shape`` on both axes."""
    picked = []
    for size, axis in zip(shape, ('H', 'W')):
        lo, hi = ranges[axis]
        candidate = size + 23 if size + 23 <= hi else size - 23
        picked.append(min(max(candidate, lo), hi))
    return tuple(picked)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint (tools/train.py); default: the config\'s own init')
    parser.add_argument('--shape', type=positive_int, nargs=2, required=True, metavar=('H', 'W'),
                        help='example input size (H and W are dynamic around it)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--backbone', action='store_true',
                        help='export the backbone alone (its four maps as outputs)')
    parser.add_argument('--check-shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='second size for the onnxruntime check (default: one in range)')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    parser.add_argument('--atol', type=float, default=1e-3,
                        help='fail when onnxruntime and eager differ by more (default: 1e-3)')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default: torch\'s)')
    parser.add_argument('--optimize', choices=['basic', 'full'], default='basic',
                        help='basic: constant folding and dead/duplicate nodes (default); full: '
                        'also onnxscript\'s pattern rewriter, as torch.onnx.export does '
                        '(minutes longer, see basic_optimize)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if osp.isdir(args.out) or not osp.isdir(osp.dirname(osp.abspath(args.out))):
        parser.error(f'--out {args.out}: give a .onnx file in an existing directory')
    return args


def main(argv=None):
    args = parse_args(argv)
    _, model, _ = load_model(args.config, args.checkpoint, args.cfg_options)
    module, output_names = exportable(model, args.backbone)
    shape = tuple(args.shape)
    example = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    ep = export_onnx(module, example, args.out, output_names, args.opset, args.optimize)
    ranges = dynamic_ranges(ep, getattr(model, 'backbone', None), shape,
                            pooled=has_adaptive_pooling(module))
    what = 'backbone' if args.backbone else f'{type(model).__name__} (tensor mode)'
    span = ', '.join(f'{axis} in [{lo}, {hi}]' for axis, (lo, hi) in ranges.items())
    print(f'exported {what} of {args.config} -> {args.out} '
          f'({osp.getsize(args.out) / 2**20:.1f} MB); input inputs [1, 3, H, W] with {span}; '
          f'outputs {", ".join(output_names)}')
    if args.no_check:
        return None
    check = tuple(args.check_shape) if args.check_shape else default_check_shape(shape, ranges)
    rows = check_with_onnxruntime(args.out, module, [shape, check])
    worst = 0.0
    for row in rows:
        diff = max(row['max_abs_diff'].values())
        worst = max(worst, diff)
        outs = ', '.join(f'{n} {s}' for n, s in row['output_shapes'].items())
        print(f'onnxruntime vs eager at 1x3x{row["shape"][0]}x{row["shape"][1]}: '
              f'max abs diff {diff:.3g} ({outs})')
    if worst > args.atol:
        sys.exit(f'export_onnx: onnxruntime differs from eager by {worst:.3g} > --atol '
                 f'{args.atol}')
    return rows


if __name__ == '__main__':
    run(main)

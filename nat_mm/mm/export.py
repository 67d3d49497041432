"""Export NAT/DiNAT models to ONNX, with neighborhood attention in standard ONNX ops.

What can be exported (:func:`exportable`):

- a segmentor (UPerNet, any mmseg ``EncoderDecoder``): its tensor-mode output, the decode head's
  logits ``[1, classes, H/4, W/4]`` for a preprocessed (normalised, padded) image
  ``[1, 3, H, W]`` (:class:`TensorMode`);
- the backbone alone of any model, its four NCHW maps as outputs ``level0`` .. ``level3``
  (:class:`BackboneOutputs`).

How (:func:`export_onnx`): ``torch.export`` with dynamic H and W (the compiled ``nat_mm::`` ops
stay single nodes, their fake kernels carry the symbolic shapes), then ``run_decompositions``
with :func:`nat_mm.ops.export_decompositions`, which swaps those nodes for the pure-PyTorch path
(gather + einsum + softmax: the maths is written once, in ``nat_mm/ops/_torch_impl.py``), then
``torch.onnx.export(dynamo=True)`` and a light optimization (:func:`basic_optimize`).
:func:`check_with_onnxruntime` compares the file with the eager model.

H and W are dynamic within a range (:func:`dynamic_ranges`): layers whose map is smaller than
``kernel_size * dilation`` are zero-padded, and a program covers the sizes where every layer pads
or does not pad as it did at the example's size; the range comes from the backbone's own padding
rule (:func:`nat_mm.models.geometry.same_padding_range`). A segmentor with adaptive pooling
(UPerNet's PPM) is further limited to the sizes whose stride-32 map has the example's size (ONNX
has no adaptive pooling; its decomposition is laid out for one input size).

Detectors cannot be exported whole here (RoI ops, NMS, per-image outputs): export the backbone,
or use mmdeploy for the detector.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.export import Dim

from ..models import NeighborhoodAttention2D
from ..models.geometry import lengths_with_level_size, same_padding_range
from ..ops import export_decompositions
from .cli import ModelTypeError

__all__ = ['MMDEPLOY', 'ExportError', 'BackboneOutputs', 'TensorMode', 'exportable',
           'torch_export', 'has_adaptive_pooling', 'dynamic_ranges', 'basic_optimize',
           'export_onnx', 'check_with_onnxruntime', 'default_check_shape']

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


def _has_na_levels(backbone: torch.nn.Module) -> bool:
    """Whether ``backbone`` is of the NAT family: ``levels[i].blocks[j].attn`` attention."""
    levels = getattr(backbone, 'levels', None)
    return levels is not None and any(isinstance(m, NeighborhoodAttention2D)
                                      for m in backbone.modules())


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
    guards that ``ep.module()`` checks at run time but that an ONNX file cannot, so with a
    NAT-family ``backbone`` and the example ``shape`` the range is narrowed to the backbone's own
    :func:`nat_mm.models.geometry.same_padding_range`, and
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
        if backbone is not None and shape is not None and _has_na_levels(backbone):
            plo, phi = same_padding_range(backbone, shape[n])
            lo, hi = max(lo, plo), min(hi, phi)
            if pooled:
                # ONNX has no adaptive pooling: its decomposition holds the window layout of the
                # example's coarsest map (ceil(L / stride)), valid only while that size stays.
                plo, phi = lengths_with_level_size(shape[n], len(backbone.levels) - 1)
                lo, hi = max(lo, plo), min(hi, phi)
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

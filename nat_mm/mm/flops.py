"""FLOP counting of detectors and segmentors, neighborhood attention included, with mmengine's
FLOP analyzer.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` traces a model with ``torch.jit`` and counts
each traced operator with a handle; it has none for our compiled ops (``nat_mm::na2d_forward``
and the unfused ``na2d_qk_forward``/``na2d_av_forward``). Following mmengine's convention for a
matmul (one multiply-add is one FLOP), neighborhood attention costs two contractions over the
``kh * kw`` window, ``q.k`` and ``attn.v``, each ``B * H * W * heads * kh * kw * D``:

    na2d:    2 * B * H * W * heads * kh * kw * D
    na2d_qk: B * H * W * heads * kh * kw * D
    na2d_av: B * H * W * heads * kh * kw * D

which reproduces the FLOPs in the NAT and DiNAT papers. The softmax, the rpb addition and the
scale are not counted, as mmengine does not count them for other attention either. Without the
compiled extension the pure-PyTorch path runs two ``einsum`` calls that mmengine's einsum handle
already counts the same way.

:func:`count_flops` counts a whole config's model the way mmdet's and mmseg's get_flops do: for
one image through the inference path with ``mode='tensor'``: for detectors backbone, neck, RPN
and RoI heads (1000 random proposals, masks for the first 100, as mmdet 2's forward_dummy that
the papers used), or Mask2Former's pixel and transformer decoders (no post-processing); for
segmentors backbone and decode head (the auxiliary head only trains). The parameter count is the
whole model's.

Example:
    >>> from mmengine.analysis import FlopAnalyzer
    >>> from nat_mm.mm.flops import add_na_flop_handles, count_flops
    >>> analyzer = add_na_flop_handles(FlopAnalyzer(model, inputs))  # doctest: +SKIP
    >>> analyzer.total()  # doctest: +SKIP
    >>> flops, params = count_flops(cfg, (1280, 800))  # doctest: +SKIP
"""
from typing import Any, List, Sequence, Tuple

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from mmengine.analysis.print_helper import complexity_stats_table
from mmengine.config import Config

from .build import build_model, task_of

__all__ = ['na2d_flop_jit', 'na2d_qk_flop_jit', 'na2d_av_flop_jit', 'NA_FLOP_HANDLES',
           'add_na_flop_handles', 'DEFAULT_SHAPES', 'DetTensorForward', 'SegTensorForward',
           'count_flops']

#: (H, W) used in the papers: 1280x800 for COCO, 512x2048 for ADE20K.
DEFAULT_SHAPES = {'det': (1280, 800), 'seg': (512, 2048)}


def _int_pair(val: Any, what: str) -> Tuple[int, int]:
    """Read an ``int[]`` argument of a traced op (a constant or a ``prim::ListConstruct``)."""
    value = val.toIValue()
    if value is None and val.node().kind() == 'prim::ListConstruct':
        value = [v.toIValue() for v in val.node().inputs()]
    if value is None or len(value) != 2 or any(v is None for v in value):
        raise ValueError(f'cannot read {what} of a traced neighborhood-attention op: {val}')
    return int(value[0]), int(value[1])


def _tensor_shape(val: Any, what: str) -> List[int]:
    shape = get_shape(val)
    if shape is None or len(shape) != 5:
        raise ValueError(f'expected a traced 5-D {what}, got shape {shape}')
    return shape


def na2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``nat_mm::na2d_forward(q, k, v, rpb, kernel_size, dilation, scale)``: q.k and attn.v."""
    batch, height, width, heads, dim = _tensor_shape(inputs[0], 'query [B, H, W, heads, D]')
    kh, kw = _int_pair(inputs[4], 'kernel_size')
    return 2 * batch * height * width * heads * kh * kw * dim


def na2d_qk_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``nat_mm::na2d_qk_forward(q, k, rpb, kernel_size, dilation)``: q.k."""
    batch, height, width, heads, dim = _tensor_shape(inputs[0], 'query [B, H, W, heads, D]')
    kh, kw = _int_pair(inputs[3], 'kernel_size')
    return batch * height * width * heads * kh * kw * dim


def na2d_av_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``nat_mm::na2d_av_forward(attn, v, kernel_size, dilation)``: attn.v."""
    batch, height, width, heads, window = _tensor_shape(inputs[0],
                                                        'attn [B, H, W, heads, kh*kw]')
    dim = _tensor_shape(inputs[1], 'value [B, H, W, heads, D]')[4]
    return batch * height * width * heads * window * dim


NA_FLOP_HANDLES = {
    'nat_mm::na2d_forward': na2d_flop_jit,
    'nat_mm::na2d_qk_forward': na2d_qk_flop_jit,
    'nat_mm::na2d_av_forward': na2d_av_flop_jit,
}


def add_na_flop_handles(analyzer: FlopAnalyzer) -> FlopAnalyzer:
    """Register the neighborhood-attention handles on ``analyzer`` and return it.

    Args:
        analyzer (FlopAnalyzer): mmengine's FLOP analyzer for a model that uses NAT/DiNAT.

    Returns:
        FlopAnalyzer: the same analyzer, for chaining.
    """
    return analyzer.set_op_handle(**NA_FLOP_HANDLES)


class DetTensorForward(torch.nn.Module):
    """Traceable inference path of a detector with a fixed number of proposals.

    mmdet's ``mode='tensor'`` runs the RPN's NMS, whose output count depends on the input; like
    mmdet 2.x's ``forward_dummy`` (which the papers' numbers come from) we feed 1000 proposals.

    Args:
        model (nn.Module): An mmdet detector.
        num_proposals (int): Random proposals fed to the RoI head. Defaults to 1000.
    """

    def __init__(self, model, num_proposals: int = 1000):
        super().__init__()
        self.model = model
        self.num_proposals = num_proposals

    def forward(self, inputs):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        model = self.model
        feats = model.extract_feat(inputs)
        outs = [model.rpn_head(feats)] if getattr(model, 'with_rpn', False) else []
        if getattr(model, 'with_roi_head', False):
            h, w = inputs.shape[-2:]
            seed = torch.Generator().manual_seed(0)
            xy = torch.rand(self.num_proposals, 2, generator=seed) * torch.tensor([w / 2, h / 2])
            proposals = InstanceData(bboxes=torch.cat([xy, xy * 2], dim=1))
            sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                 pad_shape=(h, w), batch_input_shape=(h, w),
                                                 scale_factor=(1., 1.)))
            outs.append(self._roi_forward(model.roi_head, feats, proposals, sample))
        elif hasattr(model, 'panoptic_head'):  # MaskFormer / Mask2Former: pixel + transformer
            # decoders; the data samples are only passed through (no post-processing counted)
            outs.append(model.panoptic_head(feats, [DetDataSample()]))
        else:
            outs.append(model.bbox_head(feats) if hasattr(model, 'bbox_head') else feats)
        return outs

    @staticmethod
    def _roi_forward(roi_head, feats, proposals, sample):
        if not hasattr(roi_head, 'num_stages'):  # StandardRoIHead: masks for rois[:100]
            return roi_head.forward(feats, [proposals], [sample])
        # mmdet 3's CascadeRoIHead.forward draws masks for all 1000 rois in all stages;
        # count them as the papers (mmdet 2's forward_dummy) do: the first 100 rois
        from mmdet.structures.bbox import bbox2roi
        rois = bbox2roi([proposals.bboxes])
        outs = list(roi_head._refine_roi(feats, rois, [sample.metainfo], (len(rois), ))[1:])
        if roi_head.with_mask:
            outs += [roi_head._mask_forward(stage, feats, rois[:100])['mask_preds']
                     for stage in range(roi_head.num_stages)]
        return outs


class SegTensorForward(torch.nn.Module):
    """Traceable inference path of a segmentor: backbone and decode head (Mask2Former's decode
    head with its empty data samples)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        head = self.model.decode_head
        if hasattr(head, 'transformer_decoder'):  # Mask2Former's forward also takes samples
            return head(self.model.extract_feat(inputs), [])
        return self.model._forward(inputs)


def count_flops(cfg: Config, shape: Sequence[int], table: bool = False) -> Tuple[int, int]:
    """FLOPs and parameters of the model of ``cfg`` for one ``shape`` ``(H, W)`` image.

    The model is built with random weights (no ``Pretrained`` initialiser, nothing downloaded)
    and counted in eval mode, NA through :data:`NA_FLOP_HANDLES`.

    Args:
        cfg (Config): A detector or segmentor config.
        shape (Sequence[int]): ``(H, W)`` of the input.
        table (bool): Also print mmengine's per-module table (depth 3). Defaults to False.

    Returns:
        tuple[int, int]: ``(flops, params)``.
    """
    task = task_of(cfg)
    model = build_model(cfg, pretrained=False, revert_sync_bn=False).eval()
    wrapper = DetTensorForward(model) if task == 'det' else SegTensorForward(model)
    inputs = torch.zeros(1, 3, *shape)
    with torch.no_grad():
        analyzer = add_na_flop_handles(FlopAnalyzer(wrapper, (inputs, )))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = analyzer.total()
        if table:
            print(complexity_stats_table(analyzer, max_depth=3))
    params = parameter_count(model)['']
    return flops, params

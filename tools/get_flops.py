"""Count the FLOPs and parameters of a detector or segmentor with mmengine's FLOP analyzer.

Neighborhood attention is counted by the handles in :mod:`nat_mm.mm.flops` (its q.k and attn.v
multiply-adds), as in the NAT and DiNAT papers. Like mmdet's and mmseg's get_flops, the count is
for one image through the inference path with ``mode='tensor'``: for detectors backbone, neck,
RPN and RoI heads (1000 random proposals, masks for the first 100, as mmdet 2's forward_dummy
that the papers used), or Mask2Former's pixel and transformer decoders (no post-processing); for
segmentors backbone and decode head (the auxiliary head only trains). The parameter count is the
whole model's.

Examples:
    python tools/get_flops.py configs/det/mask_rcnn_nat_tiny_3x.py            # 1280x800
    python tools/get_flops.py configs/seg/upernet_nat_tiny_160k.py --shape 512 2048

The last line reads, e.g., ``FLOPs: 258.1G  Params: 47.9M``.
"""
import argparse

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.print_helper import complexity_stats_table
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import nat_mm  # noqa: F401  registers NAT and DiNAT
from _common import task_of
from nat_mm.mm.cli import DictAction, load_config, positive_int, run
from nat_mm.mm.flops import add_na_flop_handles

# (H, W) used in the papers: 1280x800 for COCO, 512x2048 for ADE20K.
DEFAULT_SHAPES = {'det': (1280, 800), 'seg': (512, 2048)}


def parse_args():
    parser = argparse.ArgumentParser(description='Count FLOPs and parameters of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
        help='input image size; defaults to 1280 800 (detection) or 512 2048 (segmentation)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings')
    parser.add_argument('--table', action='store_true', help='print a per-module table')
    return parser.parse_args()


class _DetTensorForward(torch.nn.Module):
    """Traceable inference path of a two-stage detector with a fixed number of proposals.

    mmdet's ``mode='tensor'`` runs the RPN's NMS, whose output count depends on the input; like
    mmdet 2.x's ``forward_dummy`` (which the papers' numbers come from) we feed 1000 proposals.
    """

    def __init__(self, model, num_proposals: int = 1000):
        super().__init__()
        self.model = model
        self.num_proposals = num_proposals

    def forward(self, inputs):
        from mmdet.structures import DetDataSample
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


class _SegTensorForward(torch.nn.Module):

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        head = self.model.decode_head
        if hasattr(head, 'transformer_decoder'):  # Mask2Former's forward also takes samples
            return head(self.model.extract_feat(inputs), [])
        return self.model._forward(inputs)


def build_model(cfg: Config):
    init_default_scope(cfg.get('default_scope'))
    if task_of(cfg) == 'det':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    cfg.model.get('backbone', {}).pop('init_cfg', None)  # random weights are enough
    cfg.model.pop('pretrained', None)
    return MODELS.build(cfg.model)


def count(cfg: Config, shape, table: bool = False):
    """Return ``(flops, params)`` of the model in ``cfg`` for one ``shape`` image."""
    task = task_of(cfg)
    model = build_model(cfg).eval()
    wrapper = _DetTensorForward(model) if task == 'det' else _SegTensorForward(model)
    inputs = torch.zeros(1, 3, *shape)
    with torch.no_grad():
        analyzer = add_na_flop_handles(FlopAnalyzer(wrapper, (inputs, )))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = analyzer.total()
        if table:
            print(complexity_stats_table(analyzer, max_depth=3))
    params = parameter_count(model)['']
    return flops, params


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg)
    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPES[task]
    flops, params = count(cfg, shape, args.table)
    print(f'config: {args.config}\ninput shape: 1x3x{shape[0]}x{shape[1]}')
    print(f'FLOPs: {flops / 1e9:.1f}G  Params: {params / 1e6:.1f}M')


if __name__ == '__main__':
    run(main)

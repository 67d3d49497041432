"""Every released config builds in its registry, has the papers' parameter count and trains.

One test per config builds the model once and checks: the parameter count (millions, rounded,
NAT/DiNAT papers), one training iteration (finite loss, gradients reach the backbone) and one
inference, on a small synthetic batch on the CPU with ``init_cfg`` cleared (no download).
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

import nat_mm  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Parameter counts (millions, rounded) from the NAT and DiNAT papers; DiNAT = NAT.
PARAMS = {
    'det/mask_rcnn_{}_mini_3x.py': 40,
    'det/mask_rcnn_{}_tiny_3x.py': 48,
    'det/mask_rcnn_{}_small_3x.py': 70,
    'det/cascade_{}_mini_3x.py': 77,
    'det/cascade_{}_tiny_3x.py': 85,
    'det/cascade_{}_small_3x.py': 108,
    'det/cascade_{}_base_3x.py': 147,
    'seg/upernet_{}_mini_160k.py': 50,
    'seg/upernet_{}_tiny_160k.py': 58,
    'seg/upernet_{}_small_160k.py': 82,
    'seg/upernet_{}_base_160k.py': 123,
}
CONFIGS = {pattern.format(net): count for pattern, count in PARAMS.items()
           for net in ('nat', 'dinat')}
# The three largest: built and checked, but trained only in the slow run.
SLOW = {'det/cascade_{}_base_3x.py', 'seg/upernet_{}_base_160k.py', 'det/cascade_{}_small_3x.py'}
H, W = 128, 160


def _params(config):
    pattern = config.replace('_dinat_', '_{}_').replace('_nat_', '_{}_')
    marks = [pytest.mark.slow] if pattern in SLOW else []
    return pytest.param(config, CONFIGS[config], id=config, marks=marks)


def test_every_config_is_listed():
    found = {osp.relpath(p, osp.join(ROOT, 'configs'))
             for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))}
    found = {p for p in found if not osp.basename(p).startswith('demo_')}
    assert found == set(CONFIGS)


def load(config):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.default_scope)
    return cfg


def build(cfg):
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def det_batch(model, num_classes=80):
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, H, W)] * 2, num_items=[3, 2],
                            num_classes=num_classes, with_mask=True)
    return model.data_preprocessor(packed, True)


def seg_batch(model, num_classes=150):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                                             pad_shape=(H, W)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, H, W)))
        samples.append(sample)
    packed = dict(inputs=[torch.randint(0, 256, (3, H, W), dtype=torch.uint8)] * 2,
                  data_samples=samples)
    return model.data_preprocessor(packed, True)


@pytest.mark.parametrize('config,expected', [_params(c) for c in sorted(CONFIGS)])
def test_config(config, expected):
    cfg = load(config)
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (H, W)  # not 512x512 crops: keep the CPU test small
    torch.manual_seed(0)
    model = build(cfg)
    backbone = type(model.backbone).__name__
    assert backbone == ('DiNAT' if '_dinat_' in config else 'NAT')
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6) == expected, f'{config}: {params / 1e6:.2f}M parameters'

    model.train()
    data = det_batch(model) if cfg.default_scope == 'mmdet' else seg_batch(model)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss), losses
    loss.backward()
    grad = model.backbone.patch_embed.proj[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 2
    if cfg.default_scope == 'mmdet':
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(results[0].pred_instances.keys())
    else:
        assert results[0].pred_sem_seg.data.shape == (1, H, W)


@pytest.mark.parametrize('config', ['det/demo_mask_rcnn_nat_mini.py',
                                    'seg/demo_upernet_nat_mini.py'])
def test_demo_config_builds(config):
    cfg = load(config)
    model = build(cfg)
    assert type(model.backbone).__name__ == 'NAT'
    if cfg.default_scope == 'mmdet':
        assert model.roi_head.bbox_head.num_classes == 1
    else:
        assert model.decode_head.num_classes == 2


def test_det_recipe():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/det/mask_rcnn_nat_tiny_3x.py'))
    assert cfg.custom_imports == dict(imports=['nat_mm'], allow_failed_imports=False)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                               weight_decay=0.05)
    assert set(cfg.optim_wrapper.paramwise_cfg.custom_keys) == {'rpb', 'norm'}
    assert cfg.train_cfg.max_epochs == 36
    assert cfg.param_scheduler[0].end == 500 and cfg.param_scheduler[0].start_factor == 1e-3
    assert cfg.param_scheduler[1].milestones == [27, 33]
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.model.backbone.init_cfg.checkpoint.endswith('/nat_tiny.pth')
    dinat = Config.fromfile(osp.join(ROOT, 'configs/det/cascade_dinat_tiny_3x.py'))
    assert dinat.model.backbone.type == 'DiNAT' and dinat.model.backbone.task == 'det'
    assert dinat.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint='https://shi-labs.com/projects/dinat/checkpoints/'
        'imagenet1k/dinat_tiny_in1k_224.pth')


def test_seg_recipe():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/seg/upernet_dinat_small_160k.py'))
    assert cfg.model.backbone.type == 'DiNAT' and cfg.model.backbone.task == 'seg'
    assert cfg.optim_wrapper.optimizer.lr == 6e-5 and cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert cfg.param_scheduler[0].end == 1500 and cfg.param_scheduler[0].start_factor == 1e-6
    assert cfg.param_scheduler[1].end == 160000 and cfg.param_scheduler[1].power == 1.0
    assert cfg.model.auxiliary_head.in_index == 2
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.model.test_cfg.mode == 'whole'
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    assert [t.scale_factor for t in cfg.tta_pipeline[1].transforms[0]] == [
        0.5, 0.75, 1.0, 1.25, 1.5, 1.75]

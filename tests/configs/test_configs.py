"""Every released config builds in its registry, has the papers' parameter count and trains.

One test per config builds the model once and checks: the parameter count (millions, rounded,
NAT/DiNAT papers, read from configs/metafile.yml), one training iteration (finite loss, gradients
reach the backbone) and one
inference, on a small synthetic batch on the CPU with ``init_cfg`` cleared (no download).
The DiNAT-Large and DiNAT_s configs (official DiNAT.md tables) are counted on the meta device,
within 0.6M of the table, and the smallest of each family trains and predicts.
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import nat_mm  # noqa: F401
from nat_mm.mm import data as synthetic
from nat_mm.mm.build import build_model
from nat_mm.mm.zoo import load_metafile
from nat_mm.testing.configs import load_released_config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# The papers' parameter counts (millions, rounded): configs/metafile.yml's Paper Parameters (M).
PAPER_PARAMS = {config: model.paper_params_m for config, model in load_metafile().items()}
# NAT and DiNAT (the NAT and DiNAT papers): trained, and counted to the rounded million.
PATTERNS = [
    'det/mask_rcnn_{}_mini_3x.py', 'det/mask_rcnn_{}_tiny_3x.py', 'det/mask_rcnn_{}_small_3x.py',
    'det/cascade_{}_mini_3x.py', 'det/cascade_{}_tiny_3x.py', 'det/cascade_{}_small_3x.py',
    'det/cascade_{}_base_3x.py', 'seg/upernet_{}_mini_160k.py', 'seg/upernet_{}_tiny_160k.py',
    'seg/upernet_{}_small_160k.py', 'seg/upernet_{}_base_160k.py',
]
CONFIGS = {pattern.format(net): PAPER_PARAMS[pattern.format(net)] for pattern in PATTERNS
           for net in ('nat', 'dinat')}
# DiNAT-Large and DiNAT_s (DiNAT.md tables of the official repository): counted within 0.6M.
NEW_PARAMS = {config: PAPER_PARAMS[config] for config in [
    'det/cascade_dinat_large_3x.py', 'seg/upernet_dinat_large_160k.py',
    'det/mask_rcnn_dinat_s_tiny_3x.py', 'det/mask_rcnn_dinat_s_small_3x.py',
    'det/cascade_dinat_s_tiny_3x.py', 'det/cascade_dinat_s_small_3x.py',
    'det/cascade_dinat_s_base_3x.py', 'det/cascade_dinat_s_large_3x.py',
    'seg/upernet_dinat_s_tiny_160k.py', 'seg/upernet_dinat_s_small_160k.py',
    'seg/upernet_dinat_s_base_160k.py', 'seg/upernet_dinat_s_large_160k.py',
]}
# The smallest of each new family: trained and run like the configs above.
NEW_TRAINED = {'det/mask_rcnn_dinat_s_tiny_3x.py', 'seg/upernet_dinat_s_tiny_160k.py',
               'seg/upernet_dinat_large_160k.py'}
NEW_SLOW = {'seg/upernet_dinat_large_160k.py'}
# Trained only in the slow run (`make test-fast` trains Mask R-CNN and UPerNet Mini and Tiny):
# the cascades (about 10 s each here) and the Small and Base models.
SLOW = {'det/cascade_{}_mini_3x.py', 'det/cascade_{}_tiny_3x.py', 'det/cascade_{}_small_3x.py',
        'det/cascade_{}_base_3x.py', 'det/mask_rcnn_{}_small_3x.py', 'seg/upernet_{}_small_160k.py',
        'seg/upernet_{}_base_160k.py'}
H, W = 128, 160


def _params(config):
    if config in NEW_PARAMS:
        marks = [pytest.mark.slow] if config in NEW_SLOW else []
        return pytest.param(config, NEW_PARAMS[config], id=config, marks=marks)
    pattern = config.replace('_dinat_', '_{}_').replace('_nat_', '_{}_')
    marks = [pytest.mark.slow] if pattern in SLOW else []
    return pytest.param(config, CONFIGS[config], id=config, marks=marks)


BACKBONE_TYPES = {'_dinat_s_': 'DiNAT_s', '_dinat_': 'DiNAT', '_nat_': 'NAT'}


def backbone_type(config):
    return next(t for key, t in BACKBONE_TYPES.items() if key in config)


def test_every_config_is_listed():
    found = {osp.relpath(p, osp.join(ROOT, 'configs'))
             for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))}
    found = {p for p in found if not osp.basename(p).startswith('demo_')}
    # Mask2Former DiNAT-L: counted, trained and predicted in test_mask2former.py, which checks
    # that it has them all
    mask2former = {c for c in found if osp.basename(c).startswith('mask2former_')}
    assert len(mask2former) == 4
    assert found == set(CONFIGS) | set(NEW_PARAMS) | mask2former == set(PAPER_PARAMS)


def load(config):
    return load_released_config(config)


def fewer_rois(cfg, proposals=64, sampled=64, detections=20):
    """Cap the RoIs a detector's CPU test pushes through its RoI heads.

    The recipes' 2000 proposals and 512 sampled RoIs per image cost Cascade Mask R-CNN about a
    TFLOP per training step in its 4-conv box heads (a minute here); the architecture, and so
    the parameter count and the wiring under test, do not depend on these numbers."""
    train, test = cfg.model.train_cfg, cfg.model.test_cfg
    train.rpn_proposal.update(nms_pre=proposals, max_per_img=proposals)
    stages = train.rcnn if isinstance(train.rcnn, list) else [train.rcnn]
    for stage in stages:
        stage.sampler.num = sampled
    test.rpn.update(nms_pre=proposals, max_per_img=proposals)
    test.rcnn.max_per_img = detections
    return cfg


def build(cfg):
    return build_model(cfg)  # SyncBN as BN


def det_batch(model, num_classes=80):
    packed = synthetic.det_batch((H, W), [3, 2], num_classes)  # boxes and masks
    return model.data_preprocessor(packed, True)


def seg_batch(model, num_classes=150):
    return model.data_preprocessor(synthetic.seg_batch((H, W), 2, num_classes), True)


@pytest.mark.parametrize('config,expected', [_params(c) for c in sorted(NEW_PARAMS)])
def test_new_config_param_count(config, expected):
    """DiNAT-Large and DiNAT_s: built on the meta device (no memory, no init), counted
    within 0.6M of the official table."""
    cfg = load(config)
    with torch.device('meta'):
        model = build(cfg)
    assert type(model.backbone).__name__ == backbone_type(config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - expected) <= 0.6, f'{config}: {params:.2f}M parameters'


@pytest.mark.parametrize('config,expected',
                         [_params(c) for c in sorted(CONFIGS) + sorted(NEW_TRAINED)])
def test_config(config, expected):
    cfg = load(config)
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (H, W)  # not 512x512 crops: keep the CPU test small
    else:
        fewer_rois(cfg)
    torch.manual_seed(0)
    model = build(cfg)
    assert type(model.backbone).__name__ == backbone_type(config)
    params = sum(p.numel() for p in model.parameters())
    if config in NEW_PARAMS:
        assert abs(params / 1e6 - expected) <= 0.6, f'{config}: {params / 1e6:.2f}M parameters'
    else:
        assert round(params / 1e6) == expected, f'{config}: {params / 1e6:.2f}M parameters'

    model.train()
    data = det_batch(model) if cfg.default_scope == 'mmdet' else seg_batch(model)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss), losses
    loss.backward()
    grad = next(model.backbone.patch_embed.parameters()).grad  # the stem's first conv
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
    # mmseg 0.x's --aug-test: the test scale (2048, 512) times the ratios, keeping the ratio
    assert [t.scale for t in cfg.tta_pipeline[1].transforms[0]] == [
        (int(2048 * r), int(512 * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert all(t.keep_ratio for t in cfg.tta_pipeline[1].transforms[0])


@pytest.mark.slow
def test_large_and_dinat_s_recipes():
    """Official DiNAT-L / DiNAT_s recipes: checkpoints, dilations, drop path, lr, fp16."""
    det_l = Config.fromfile(osp.join(ROOT, 'configs/det/cascade_dinat_large_3x.py'))
    backbone = det_l.model.backbone
    assert (backbone.type, backbone.arch, backbone.task) == ('DiNAT', 'large', 'det')
    assert backbone.get('layer_scale') is None and backbone.drop_path_rate == 0.6
    assert backbone.init_cfg.checkpoint.endswith('imagenet22k/dinat_large_in22k_224.pth')
    assert det_l.optim_wrapper.type == 'OptimWrapper'  # the official DiNAT-L runs in fp32
    assert det_l.optim_wrapper.optimizer.lr == 7.5e-5
    assert set(det_l.optim_wrapper.paramwise_cfg.custom_keys) == {'rpb', 'norm'}
    seg_l = Config.fromfile(osp.join(ROOT, 'configs/seg/upernet_dinat_large_160k.py'))
    assert seg_l.model.backbone.dilations == [
        [1, 20, 1], [1, 5, 1, 10], [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5],
        [1, 2, 1, 2, 1]]
    assert seg_l.model.backbone.drop_path_rate == 0.3
    assert seg_l.optim_wrapper.type == 'OptimWrapper'
    assert seg_l.optim_wrapper.optimizer.lr == 6e-5
    assert seg_l.model.data_preprocessor.size == (512, 512)  # the official content: 512 crops
    expected = {  # config: (arch, drop path, lr, checkpoint file)
        'det/mask_rcnn_dinat_s_tiny_3x.py': ('tiny', 0.2, 1e-4, 'dinat_s_tiny_in1k_224.pth'),
        'det/mask_rcnn_dinat_s_small_3x.py': ('small', 0.35, 1e-4, 'dinat_s_small_in1k_224.pth'),
        'det/cascade_dinat_s_tiny_3x.py': ('tiny', 0.3, 1e-4, 'dinat_s_tiny_in1k_224.pth'),
        'det/cascade_dinat_s_small_3x.py': ('small', 0.5, 1e-4, 'dinat_s_small_in1k_224.pth'),
        'det/cascade_dinat_s_base_3x.py': ('base', 0.6, 7.5e-5, 'dinat_s_base_in1k_224.pth'),
        'det/cascade_dinat_s_large_3x.py': ('large', 0.6, 5e-5, 'dinat_s_large_in22k_224.pth'),
        'seg/upernet_dinat_s_tiny_160k.py': ('tiny', 0.3, 6e-5, 'dinat_s_tiny_in1k_224.pth'),
        'seg/upernet_dinat_s_small_160k.py': ('small', 0.3, 6e-5, 'dinat_s_small_in1k_224.pth'),
        'seg/upernet_dinat_s_base_160k.py': ('base', 0.3, 6e-5, 'dinat_s_base_in1k_224.pth'),
        'seg/upernet_dinat_s_large_160k.py': ('large', 0.3, 6e-5, 'dinat_s_large_in22k_224.pth'),
    }
    for config, (arch, dpr, lr, ckpt) in expected.items():
        cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
        backbone = cfg.model.backbone
        assert (backbone.type, backbone.arch) == ('DiNAT_s', arch), config
        assert backbone.drop_path_rate == dpr and cfg.optim_wrapper.optimizer.lr == lr, config
        assert backbone.init_cfg == dict(type='Pretrained', checkpoint=(
            'https://shi-labs.com/projects/dinat/checkpoints/'
            f'{"imagenet22k" if "large" in arch else "imagenet1k"}/{ckpt}')), config
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper', config  # fp16 in all of them
        assert backbone.task == config.split('/')[0], config
    seg_sl = Config.fromfile(osp.join(ROOT, 'configs/seg/upernet_dinat_s_large_160k.py'))
    assert seg_sl.model.backbone.dilations == [
        [1, 20], [1, 10], [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5], [1, 2]]

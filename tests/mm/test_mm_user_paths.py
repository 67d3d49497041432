"""Two things a user meets first, through our tools and through mmdet's/mmseg's own tools:

- a COCO-format annotation file without an ``info`` key (most converted custom datasets) must
  train and evaluate: pycocotools 2.0.9/2.0.10 crash in ``COCO.loadRes`` with ``KeyError:
  'info'`` after the first epoch; 2.0.11 (our pin) reads it with a default;
- mmseg's own ResNet bases set ``model.pretrained``, which its ``EncoderDecoder`` hands to the
  backbone: every backbone we register takes the deprecated ``pretrained`` alias of
  ``init_cfg`` as mmdet's and mmseg's backbones do.
"""
import json
import os
import re
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
import nat_mm  # noqa: E402,F401
from nat_mm.mm.registry import _MMInitMixin  # noqa: E402
from nat_mm.testing.tools import DET, ROOT, SEG, data_options, mm_tool, tool  # noqa: E402

# --- COCO annotation files without 'info' ---------------------------------------------------


def _coco_without_info(path):
    images = [dict(id=i, file_name=f'{i}.png', height=64, width=64) for i in range(2)]
    boxes = [[4., 6., 20., 16.], [30., 28., 12., 24.]]
    annotations = [dict(id=i + 1, image_id=i, category_id=1, bbox=b, area=b[2] * b[3], iscrowd=0,
                        segmentation=[[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3],
                                       b[0], b[1] + b[3]]])
                   for i, b in enumerate(boxes)]
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=1, name='nucleus')])
    path.write_text(json.dumps(coco))
    return boxes


def test_coco_metric_on_annotations_without_info(tmp_path):
    """mmdet's CocoMetric (what every val/test loop runs) on a file without ``info``: perfect
    predictions give mAP 1 (pycocotools 2.0.10: KeyError 'info' in loadRes)."""
    from mmdet.evaluation import CocoMetric
    ann_file = tmp_path / 'instances.json'
    boxes = _coco_without_info(ann_file)
    assert 'info' not in json.loads(ann_file.read_text())
    metric = CocoMetric(ann_file=str(ann_file), metric='bbox')
    metric.dataset_meta = dict(classes=('nucleus', ))
    for img_id, (x, y, w, h) in enumerate(boxes):
        metric.process({}, [dict(img_id=img_id, ori_shape=(64, 64), pred_instances=dict(
            bboxes=torch.tensor([[x, y, x + w, y + h]]), scores=torch.tensor([0.9]),
            labels=torch.tensor([0])))])
    results = metric.evaluate(size=len(boxes))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)


@pytest.mark.slow
def test_mmdet_tools_train_and_test_on_coco_without_info(demo_data, tmp_path):
    """mmdet's own tools/train.py (evaluating on the val file at the end) and tools/test.py with
    our demo config (``custom_imports``) on COCO files without ``info``. Our own tools on the same
    data: tests/tools/test_tools.py::test_train_then_test[det] and test_resume_after_sigkill."""
    for split in ('train', 'val'):
        with open(f'{demo_data}annotations/instances_{split}.json') as f:
            assert 'info' not in json.load(f)
    work = tmp_path / 'work'
    options = data_options(DET, demo_data)
    proc = tool(mm_tool('mmdet', 'train.py'), DET, '--work-dir', str(work), *options)
    log = proc.stdout + proc.stderr
    assert re.search(r'Iter\(val\) \[1/1\]', log) and re.search(r'coco/bbox_mAP: [\d.-]+', log)
    proc = tool(mm_tool('mmdet', 'test.py'), DET, str(work / 'iter_2.pth'), '--work-dir',
                str(tmp_path / 'test'), *options)
    log = proc.stdout + proc.stderr
    assert re.search(r'coco/bbox_mAP: [\d.-]+', log) and re.search(r'coco/segm_mAP: [\d.-]+', log)


# --- the deprecated `pretrained` argument ---------------------------------------------------


def _our_backbones():
    """Every class we registered, in mmdet's and in mmseg's MODELS (new ones included)."""
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    found = {}
    for registry in (DET_MODELS, SEG_MODELS):
        for name, cls in registry.module_dict.items():
            if isinstance(cls, type) and issubclass(cls, _MMInitMixin):
                found[f'{registry.scope}.{name}'] = (registry, name)
    assert {'mmdet.NAT', 'mmdet.DiNAT', 'mmseg.NAT', 'mmseg.DiNAT'} <= set(found)
    return found


BACKBONES = _our_backbones()
# One block per level keeps the tests quick; every backbone takes these.
SMALL = dict(depths=(1, 1, 1, 1), dilations=[[1]] * 4)


@pytest.fixture(scope='module')
def randomized_checkpoints(tmp_path_factory):
    """{class: path of a checkpoint of that class's default model with random weights}."""
    paths, root = {}, tmp_path_factory.mktemp('pretrained')
    for registry, name in BACKBONES.values():
        cls = registry.get(name)
        if cls in paths:
            continue
        torch.manual_seed(0)
        model = cls(**SMALL)
        for p in model.parameters():
            nn.init.normal_(p, std=0.5)
        paths[cls] = (root / f'{cls.__module__}.{name}.pth', model.state_dict())
        torch.save({'state_dict': model.state_dict()}, paths[cls][0])
    return paths


@pytest.mark.parametrize('key', sorted(BACKBONES))
def test_pretrained_alias_becomes_init_cfg(key, randomized_checkpoints):
    registry, name = BACKBONES[key]
    path, state_dict = randomized_checkpoints[registry.get(name)]
    with pytest.warns(FutureWarning, match=rf'{name}: pretrained is deprecated, use init_cfg'):
        model = registry.build(dict(type=name, pretrained=str(path), **SMALL))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    got = model.state_dict()
    assert got.keys() == state_dict.keys()
    for k, v in state_dict.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize('key', sorted(BACKBONES))
def test_pretrained_alias_errors(key):
    registry, name = BACKBONES[key]
    init_cfg = dict(type='Pretrained', checkpoint='b.pth')
    with pytest.raises(ValueError, match=f'{name}: init_cfg and pretrained cannot be specified '
                       'at the same time'):
        registry.build(dict(type=name, pretrained='a.pth', init_cfg=init_cfg, **SMALL))
    with pytest.raises(TypeError, match=f'{name}: pretrained must be a str'):
        registry.build(dict(type=name, pretrained=3, **SMALL))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no warning without pretrained
        model = registry.build(dict(type=name, pretrained=None, init_cfg=init_cfg, **SMALL))
    assert model.init_cfg == init_cfg


@pytest.mark.slow
def test_nat_in_mmseg_resnet_upernet_base_with_model_pretrained(demo_data, tmp_path):
    """mmseg's own tools/train.py on mmseg's own ``upernet_r50_4xb4-80k_ade20k-512x512.py`` (which
    sets ``model.pretrained``) with the backbone swapped for NAT and ``model.pretrained`` pointed
    at an official-layout NAT-Mini checkpoint: it trains, and (learning rate 0) the backbone
    holds the checkpoint's weights."""
    from mmengine.config import Config

    from nat_mm.models import NAT
    torch.manual_seed(0)
    source = NAT(arch='mini')
    for p in source.parameters():
        nn.init.normal_(p, std=0.1)
    official = {k: v for k, v in source.state_dict().items() if not re.match(r'norm\d', k)}
    official.update({'norm.weight': torch.ones(512), 'norm.bias': torch.zeros(512),
                     'head.weight': torch.zeros(1000, 512), 'head.bias': torch.zeros(1000)})
    ckpt = tmp_path / 'nat_mini.pth'
    torch.save({'model': official}, ckpt)

    demo = Config.fromfile(os.path.join(ROOT, SEG))
    loaders = {}
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = demo[key].to_dict()
        loader['dataset']['data_root'] = demo_data
        loader['batch_size'] = 2
        loaders[key] = dict(_delete_=True, **loader)
    config = tmp_path / 'upernet_nat_mini_r50_base.py'
    config.write_text(f"""
_base_ = ['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py']
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)
model = dict(
    pretrained={str(ckpt)!r},
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(_delete_=True, type='NAT', arch='mini', drop_path_rate=0.),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=64, num_classes=2),
    auxiliary_head=dict(in_channels=256, channels=32, num_classes=2))
train_dataloader = {loaders['train_dataloader']!r}
val_dataloader = {loaders['val_dataloader']!r}
test_dataloader = {loaders['test_dataloader']!r}
train_cfg = dict(max_iters=2, val_interval=2)
optim_wrapper = dict(optimizer=dict(lr=0.))
param_scheduler = [dict(type='ConstantLR', factor=1., by_epoch=False)]  # PolyLR has eta_min > 0
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
""")
    cfg = Config.fromfile(str(config))
    assert cfg.model.pretrained == str(ckpt) and cfg.model.type == 'EncoderDecoder'
    assert cfg.train_dataloader.dataset.type == 'BaseSegDataset'
    work = tmp_path / 'work'
    proc = tool(mm_tool('mmseg', 'train.py'), str(config), '--work-dir', str(work))
    log = proc.stdout + proc.stderr
    assert 'NAT: pretrained is deprecated' in log
    assert re.search(r'mIoU: [\d.]+', log)
    saved = torch.load(work / 'iter_2.pth', map_location='cpu')['state_dict']
    for key, value in source.state_dict().items():
        if not re.match(r'norm\d', key):  # output norms: not in a classification checkpoint
            assert torch.equal(saved['backbone.' + key], value), key

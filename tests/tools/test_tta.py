"""`tools/test.py SEG_CONFIG CKPT --tta` runs the papers' multi-scale test: mmseg 0.x's
`--aug-test` (MultiScaleFlipAug, img_scale=(2048, 512), ratios 0.5-1.75, flip)."""
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config

import nat_mm  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def aug_test_size(h, w, ratio):
    """The size mmseg 0.x's --aug-test gives an h x w image at ``ratio``, written from its rule:
    the scale (2048, 512) times the ratio (int-truncated, MultiScaleFlipAug), then
    mmcv.imrescale with keep_ratio: factor min(long / max(h, w), short / min(h, w)), each side
    ``int(side * factor + 0.5)``."""
    long_edge, short_edge = int(2048 * ratio), int(512 * ratio)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def test_the_rule_on_known_sizes():
    # an ADE20K-like 512x683 image: the short side binds, at 1.0 it stays.
    assert aug_test_size(512, 683, 1.0) == (512, 683)
    assert aug_test_size(512, 683, 0.5) == (256, 342)
    # a panorama: the long side binds (2048 * 0.75 = 1536).
    assert aug_test_size(300, 3000, 0.75) == (154, 1536)


@pytest.mark.parametrize('config', ['seg/upernet_nat_tiny_160k.py',
                                    'seg/upernet_dinat_s_tiny_160k.py',
                                    'seg/upernet_dinat_large_160k.py'])
@pytest.mark.parametrize('size', [(512, 683), (683, 512), (375, 500), (300, 3000), (97, 131),
                                  (1024, 1024)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_tta_pipeline_reproduces_aug_test(tmp_path, config, size):
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    init_default_scope('mmseg')
    pipeline = [TRANSFORMS.build(t) for t in cfg.tta_pipeline]
    h, w = size
    img, seg = tmp_path / 'img.png', tmp_path / 'seg.png'
    cv2.imwrite(str(img), np.random.randint(0, 255, (h, w, 3), np.uint8))
    cv2.imwrite(str(seg), np.random.randint(0, 150, (h, w), np.uint8))
    results = dict(img_path=str(img), seg_map_path=str(seg), reduce_zero_label=True,
                   seg_fields=[])
    for t in pipeline:
        results = t(results)
    samples = results['data_samples']
    assert len(samples) == 2 * len(RATIOS)
    got = [(tuple(s.img_shape), s.flip) for s in samples]
    expected = [(aug_test_size(h, w, r), flip) for r in RATIOS for flip in (False, True)]
    assert sorted(got) == sorted(expected)
    for inputs, sample in zip(results['inputs'], samples):
        assert tuple(inputs.shape[1:]) == tuple(sample.img_shape)
        assert tuple(sample.ori_shape) == (h, w)
        assert sample.gt_sem_seg.data.shape[1:] == (h, w)  # evaluated at the original size


def test_test_tool_uses_it():
    from nat_mm.testing.tools import tool_cli

    from nat_mm.mm.runtime import apply_tta
    assert tool_cli('test').apply_tta is apply_tta  # what tools/test.py --tta calls
    cfg = Config.fromfile(osp.join(ROOT, 'configs/seg/upernet_dinat_s_tiny_160k.py'))
    apply_tta(cfg, 'seg')
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module.backbone.type == 'DiNAT_s'
    resize = cfg.test_dataloader.dataset.pipeline[1].transforms[0]
    assert [t.scale for t in resize] == [(int(2048 * r), int(512 * r)) for r in RATIOS]
    assert all(t.keep_ratio for t in resize)

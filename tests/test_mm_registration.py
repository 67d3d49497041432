"""NAT and DiNAT in mmdet's and mmseg's MODELS, built from configs like any mm backbone."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmengine')
pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
import nat_mm  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402

from nat_mm import models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(arch='mini', embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])


@pytest.mark.parametrize('package', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('name', ['NAT', 'DiNAT'])
def test_registered_in_both_registries(package, name):
    registry = __import__(f'{package}.registry', fromlist=['MODELS']).MODELS
    cls = registry.get(name)
    assert cls is getattr(nat_mm.mm, name)
    assert issubclass(cls, BaseModule) and issubclass(cls, getattr(models, name))
    assert package in nat_mm.mm.registered_in


@pytest.mark.slow  # subprocesses: 6-8 s each here
def test_custom_imports_registers_in_a_fresh_process(tmp_path):
    """What a user config does: custom_imports, then type='NAT' in mmdet and mmseg."""
    config = tmp_path / 'cfg.py'
    config.write_text(textwrap.dedent(f"""
        custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)
        backbone = dict(type='NAT', **{TINY!r}, out_indices=(1, 3))
        dinat = dict(type='DiNAT', arch='mini', task='seg', embed_dims=32,
                     num_heads=[1, 2, 4, 8])
        """))
    code = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        cfg = Config.fromfile({str(config)!r})
        assert 'nat_mm' in sys.modules
        import torch
        from mmdet.registry import MODELS as DET
        from mmseg.registry import MODELS as SEG
        det, seg = DET.build(cfg.backbone), SEG.build(cfg.dinat)
        print(type(det).__module__, type(seg).__module__)
        print([tuple(o.shape) for o in det(torch.randn(1, 3, 64, 96))])
        print([b.attn.dilation for b in seg.levels[0].blocks])
        """)
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-3] == 'nat_mm.mm.registry nat_mm.mm.registry'
    assert lines[-2] == '[(1, 64, 8, 12), (1, 256, 2, 3)]'
    assert lines[-1] == '[1, 16, 1]'


def test_in_an_mmdet_detector_config(tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    config = tmp_path / 'mask_rcnn.py'
    config.write_text("_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'\n")
    cfg = Config.fromfile(str(config))
    cfg.model.backbone = dict(type='NAT', **TINY)
    cfg.model.neck.in_channels = [32, 64, 128, 256]
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    ln = detector.backbone.levels[0].blocks[0].norm1
    assert torch.all(ln.weight == 1) and detector.backbone.is_init
    feats = detector.extract_feat(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 24), (1, 256, 8, 12),
                                               (1, 256, 4, 6), (1, 256, 2, 3), (1, 256, 1, 2)]


def test_in_an_mmseg_encoder_decoder():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    model = MODELS.build(dict(
        type='EncoderDecoder',
        backbone=dict(type='DiNAT', dilations=[[2], [1], [1], [1]], **TINY),
        decode_head=dict(type='FCNHead', in_channels=256, in_index=3, channels=16,
                         num_convs=1, num_classes=3, norm_cfg=dict(type='BN'),
                         align_corners=False)))
    model.init_weights()
    logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 3, 2, 2)


def test_same_state_dict_and_behaviour_as_plain_model():
    torch.manual_seed(0)
    plain = models.NAT(**TINY, frozen_stages=2)
    mm = nat_mm.mm.NAT(**TINY, frozen_stages=2)
    assert list(plain.state_dict()) == list(mm.state_dict())
    mm.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 40, 40)
    for a, b in zip(plain.eval()(x), mm.eval()(x)):
        torch.testing.assert_close(a, b)
    assert not mm.train().levels[1].training and mm.levels[2].training


def test_non_pretrained_init_cfg_uses_mmengine_initialisers():
    model = nat_mm.mm.NAT(**TINY, init_cfg=dict(type='Constant', layer='Linear', val=0.5,
                                                bias=0.))
    model.init_weights()
    qkv = model.levels[0].blocks[0].attn.qkv
    assert torch.all(qkv.weight == 0.5) and torch.all(qkv.bias == 0)
    with pytest.raises(ValueError, match='at most one Pretrained'):
        nat_mm.mm.NAT(**TINY, init_cfg=[dict(type='Pretrained', checkpoint='a'),
                                        dict(type='Pretrained', checkpoint='b')]).init_weights()

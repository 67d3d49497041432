"""NAT, DiNAT and DiNAT_s in mmdet's and mmseg's MODELS, built from configs like any mm backbone,
and the model files of configs/*/_base_/ carrying the custom_imports that registers them."""
import json
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

REPO = Path(__file__).resolve().parents[2]
TINY = dict(arch='mini', embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])


@pytest.mark.parametrize('package', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('name', ['NAT', 'DiNAT', 'DiNAT_s'])
def test_registered_in_both_registries(package, name):
    registry = __import__(f'{package}.registry', fromlist=['MODELS']).MODELS
    cls = registry.get(name)
    assert cls is getattr(nat_mm.mm, name) and name in nat_mm.mm.__all__
    assert issubclass(cls, BaseModule) and issubclass(cls, getattr(models, name))
    assert getattr(nat_mm, name) is getattr(models, name) and name in nat_mm.__all__
    assert package in nat_mm.mm.registered_in
    # in mmdet's / mmseg's MODELS only, not in mmengine's root registry
    from mmengine.registry import MODELS as ROOT_MODELS
    assert name not in ROOT_MODELS.module_dict


# The model files of configs/*/_base_/ that name a nat_mm backbone: a whole model (Mask R-CNN,
# Cascade Mask R-CNN, UPerNet) or, for Mask2Former, the backbone dict (dinat_large_m2f) that a
# config puts next to mmdet's or mmseg's own Mask2Former.
MODEL_BASES = {'det/_base_/mask_rcnn_nat_fpn.py': 'model',
               'det/_base_/cascade_mask_rcnn_nat_fpn.py': 'model',
               'seg/_base_/upernet_nat.py': 'model',
               'det/_base_/mask2former_dinat_large.py': 'dinat_large_m2f',
               'seg/_base_/mask2former_dinat_large.py': 'dinat_large_m2f'}


@pytest.mark.slow  # a subprocess: about 10 s here
def test_model_bases_carry_custom_imports(tmp_path):
    """A config that inherits only one of our model files builds: each of them carries
    ``custom_imports=['nat_mm']``. One fresh process (nat_mm not imported) for them all: every
    file's own ``custom_imports`` is checked, the first one's imports nat_mm (Config.fromfile),
    and each model (backbone) is built, on the meta device, in the MODELS of its directory's
    package: the backbone is nat_mm's class. The other _base_ files (schedules, datasets) name no
    nat_mm type (checked too) and must not set custom_imports: mmengine refuses a key that two
    bases of a config both set, and the released configs list a model file and a schedule."""
    bases = sorted(str(p.relative_to(REPO / 'configs'))
                   for p in REPO.glob('configs/*/_base_/*.py'))
    assert set(MODEL_BASES) <= set(bases)
    code = textwrap.dedent(f"""
        import json, sys
        import torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        bases, model_bases = {bases!r}, {MODEL_BASES!r}
        assert 'nat_mm' not in sys.modules
        for base in bases:
            path = {str(REPO / 'configs')!r} + '/' + base
            own = Config.fromfile(path, import_custom_modules=False).get('custom_imports')
            imported_before = 'nat_mm' in sys.modules
            cfg = Config.fromfile(path)
            imported_after = 'nat_mm' in sys.modules
            types, stack = set(), [cfg.to_dict()]
            while stack:  # every type= in the config, however deep
                node = stack.pop()
                if isinstance(node, dict):
                    if isinstance(node.get('type'), str):
                        types.add(node['type'])
                    stack.extend(node.values())
                elif isinstance(node, (list, tuple)):
                    stack.extend(node)
            ours = sorted(types & {{'NAT', 'DiNAT', 'DiNAT_s'}})
            built = None
            if base in model_bases:
                package = 'mmdet' if base.startswith('det/') else 'mmseg'
                init_default_scope(package)
                MODELS = __import__(package + '.registry', fromlist=['MODELS']).MODELS
                key = model_bases[base]
                node = cfg[key]  # a ConfigDict, as the tools build it
                with torch.device('meta'):
                    if key == 'model':
                        node.backbone.init_cfg = None
                        model = MODELS.build(node)
                        backbone = model.backbone
                    else:
                        node.init_cfg = None
                        backbone = MODELS.build(node)
                built = [type(backbone).__module__, type(backbone).__name__,
                         backbone.__class__ is getattr(sys.modules['nat_mm.mm'],
                                                       type(backbone).__name__)]
            print('RESULT', json.dumps(dict(base=base, own=own, before=imported_before,
                                            after=imported_after, ours=ours, built=built)))
        """)
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    results = [json.loads(line[len('RESULT '):]) for line in result.stdout.splitlines()
               if line.startswith('RESULT ')]
    assert [r['base'] for r in results] == bases
    assert {r['base'] for r in results if r['ours']} == set(MODEL_BASES)
    assert not results[0]['before']  # the fresh process had not imported nat_mm
    expected_import = dict(imports=['nat_mm'], allow_failed_imports=False)
    for r in results:
        if r['base'] in MODEL_BASES:
            assert r['own'] == expected_import, r
            assert r['after'], r
            assert r['built'][0] == 'nat_mm.mm.registry' and r['built'][2], r
            assert r['built'][1] in ('NAT', 'DiNAT', 'DiNAT_s'), r
        else:
            assert r['own'] is None, r
            assert r['built'] is None, r


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

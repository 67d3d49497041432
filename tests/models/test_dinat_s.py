"""DiNAT_s backbone: official names and shapes, any input size, the Swin-style stem and patch
merging, freezing, checkpointing, and loading official-layout checkpoints."""
import math

import pytest
import torch

from nat_mm.models import DiNAT_s, NATLayer, PatchMerging
from nat_mm.testing.official import DINAT_S_OFFICIAL, dinat_s_official_shapes

DET_DILATIONS = {  # detection/configs/dinat_s/*
    6: [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7], [1, 3]],
    18: [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7], [1, 3]],
}
SEG_DILATIONS = {  # segmentation/configs/dinat_s/* (tiny, small, base)
    6: [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4], [1, 2]],
    18: [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4], [1, 2]],
}


def small_dinat_s(**kwargs):
    """One layer per level: for mechanics, not architecture."""
    torch.manual_seed(0)
    cfg = dict(arch='tiny', embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
               dilations=[[2], [1], [1], [1]], drop_path_rate=0.)
    cfg.update(kwargs)
    return DiNAT_s(**cfg)


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base', 'large'])
def test_official_names_and_shapes(arch):
    facts = DINAT_S_OFFICIAL[arch]
    with torch.device('meta'):
        model = DiNAT_s(arch=arch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == dinat_s_official_shapes(facts['C'], facts['depths'], facts['heads'])


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base', 'large'])
@pytest.mark.parametrize('task,presets', [('det', DET_DILATIONS), ('seg', SEG_DILATIONS)],
                         ids=['det', 'seg'])
def test_dilation_presets_are_the_official_ones(arch, task, presets):
    with torch.device('meta'):
        model = DiNAT_s(arch=arch, task=task)
    expected = presets[DINAT_S_OFFICIAL[arch]['depths'][2]]
    assert model.dilations == expected
    got = [[block.attn.dilation for block in level.blocks] for level in model.layers]
    assert got == expected
    # Swin layout with NA: mlp ratio 4, no layer scale, 7x7 kernels.
    block = model.layers[0].blocks[0]
    assert isinstance(block, NATLayer) and not block.layer_scale
    assert block.mlp.fc1.out_features == 4 * DINAT_S_OFFICIAL[arch]['C']
    assert block.attn.kernel_size == 7


@pytest.mark.parametrize('size', [(97, 131), (64, 64), (30, 33), (1, 1), (224, 224)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
def test_outputs_at_any_size(size):
    model = small_dinat_s().eval()
    H, W = size
    with torch.no_grad():
        outs = model(torch.randn(2, 3, H, W))
    h, w = math.ceil(H / 4), math.ceil(W / 4)
    for i, out in enumerate(outs):
        assert out.shape == (2, 32 * 2**i, h, w) and out.is_contiguous()
        assert torch.isfinite(out).all()
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_small_maps_pad_like_natten_0_14():
    """A level-0 map of 8x8 with kernel 7, dilation 2 (< 14) is padded inside the attention,
    bottom/right, and cropped back: same as running the layer on the zero-padded map."""
    model = small_dinat_s().eval()
    layer = model.layers[0].blocks[0]
    x = torch.randn(1, 8, 8, 32)
    with torch.no_grad():
        out = layer.attn(x)
        padded = torch.zeros(1, 14, 14, 32)
        padded[:, :8, :8] = x
        ref = layer.attn(padded)[:, :8, :8]
    torch.testing.assert_close(out, ref)


def test_patch_embed_pads_bottom_right():
    model = small_dinat_s().eval()
    x = torch.randn(1, 3, 30, 33)
    padded = torch.zeros(1, 3, 32, 36)
    padded[..., :30, :33] = x
    with torch.no_grad():
        torch.testing.assert_close(model.patch_embed(x), model.patch_embed(padded))


def test_patch_merging_gathers_like_swin():
    """Channels of the 2x2 gather are ordered (0,0), (1,0), (0,1), (1,1); odd maps are padded."""
    merge = PatchMerging(dim=1)
    seen = []
    merge.norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]]).reshape(1, 3, 3, 1)
    out = merge(x)
    assert out.shape == (1, 2, 2, 2)
    gathered = seen[0][0]  # [2, 2, 4]
    assert gathered[0, 0].tolist() == [1., 4., 2., 5.]
    assert gathered[0, 1].tolist() == [3., 6., 0., 0.]
    assert gathered[1, 0].tolist() == [7., 0., 8., 0.]
    assert gathered[1, 1].tolist() == [9., 0., 0., 0.]
    assert merge.reduction.bias is None and merge.norm.normalized_shape == (4,)


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages(frozen_stages):
    model = small_dinat_s(frozen_stages=frozen_stages)
    model.train()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    expected = set()
    if frozen_stages >= 0:
        expected |= {n for n, _ in model.named_parameters() if n.startswith('patch_embed.')}
    for i in range(frozen_stages):
        expected |= {n for n, _ in model.named_parameters()
                     if n.startswith((f'layers.{i}.', f'norm{i}.'))}
    assert frozen == expected
    for i in range(max(frozen_stages, 0)):
        assert not model.layers[i].training
    model(torch.randn(1, 3, 32, 32))  # no crash (the official one fails from 1 on)


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(1, 3, 48, 40)
    grads = []
    for with_cp in (False, True):
        model = small_dinat_s(with_cp=with_cp).train()
        sum(o.sum() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_out_indices_and_errors():
    model = small_dinat_s(out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    with pytest.raises(ValueError, match='unknown arch'):
        DiNAT_s(arch='mini')
    with pytest.raises(ValueError, match='unknown task'):
        DiNAT_s(task='cls')
    with pytest.raises(ValueError, match='dilation preset'):
        DiNAT_s(depths=(2, 2, 4, 2))
    with pytest.raises(ValueError, match='frozen_stages'):
        small_dinat_s(frozen_stages=5)


def _classification_checkpoint(model, head_classes):
    """An official DiNAT_s ImageNet checkpoint: the backbone names, no output norms, plus the
    final ``norm`` and the classification ``head``."""
    C = model.num_features[-1]
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()
             if not k.startswith('norm')}
    state.update({'norm.weight': torch.ones(C), 'norm.bias': torch.zeros(C),
                  'head.weight': torch.zeros(head_classes, C), 'head.bias': torch.zeros(
                      head_classes)})
    return state


@pytest.mark.parametrize('num_classes', [1000, 21841], ids=['in1k', 'in22k'])
@pytest.mark.parametrize('registry', ['mmdet', 'mmseg'])
def test_loads_official_checkpoints_in_both_registries(tmp_path, num_classes, registry):
    pytest.importorskip(registry)
    import importlib

    import nat_mm  # noqa: F401
    MODELS = importlib.import_module(f'{registry}.registry').MODELS
    cfg = dict(type='DiNAT_s', arch='tiny', embed_dims=32, depths=(1, 1, 1, 1),
               num_heads=(1, 2, 4, 8), dilations=[[1]] * 4)
    reference = MODELS.build(cfg)
    state = _classification_checkpoint(reference, num_classes)
    path = tmp_path / 'dinat_s.pth'
    torch.save({'model': state}, path)  # the official files keep the weights under 'model'
    model = MODELS.build(dict(cfg, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.startswith(('norm.', 'head.')):
            torch.testing.assert_close(loaded[key], value, msg=key)
    # a det/seg checkpoint: the same names under backbone.
    det = {f'backbone.{k}': v for k, v in loaded.items()}
    det['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': det}, tmp_path / 'det.pth')
    again = MODELS.build(dict(cfg, init_cfg=dict(type='Pretrained',
                                                 checkpoint=str(tmp_path / 'det.pth'),
                                                 prefix='backbone.')))
    again.init_weights()
    for key, value in loaded.items():
        torch.testing.assert_close(again.state_dict()[key], value, msg=key)


def test_loads_the_dinat_large_in22k_checkpoint_layout(tmp_path):
    """DiNAT-L's ImageNet-22k checkpoint: NAT names at DiNAT-L widths, a 21841-class head."""
    pytest.importorskip('mmdet')
    import nat_mm  # noqa: F401
    from mmdet.registry import MODELS
    cfg = dict(type='DiNAT', arch='large', depths=(1, 1, 1, 1), dilations=[[1]] * 4)
    reference = MODELS.build(cfg)
    assert reference.embed_dims == 192 and not reference.levels[0].blocks[0].layer_scale
    state = _classification_checkpoint(reference, 21841)
    torch.save({'model': state}, tmp_path / 'dinat_large_in22k_224.pth')
    model = MODELS.build(dict(cfg, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'dinat_large_in22k_224.pth'))))
    model.init_weights()
    for key, value in state.items():
        if not key.startswith(('norm.', 'head.')):
            torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_convert_checkpoint_file_understands_dinat_s(tmp_path):
    pytest.importorskip('mmengine')
    from nat_mm.mm.checkpoint import convert_checkpoint_file
    reference = small_dinat_s()
    state = _classification_checkpoint(reference, 1000)
    torch.save({'model': state}, tmp_path / 'src.pth')
    report = convert_checkpoint_file(str(tmp_path / 'src.pth'), str(tmp_path / 'dst.pth'))
    assert report['model']['embed_dims'] == 32 and report['model']['depths'] == [1, 1, 1, 1]
    assert report['model']['num_heads'] == [1, 2, 4, 8] and report['model']['mlp_ratio'] == 4
    assert all(k.startswith('norm') and k[4].isdigit() for k in report['missing'])
    assert set(report['unexpected']) == {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}

"""NAT / DiNAT backbones: shapes at any size, official names, freezing, checkpointing, layering."""
import copy
import functools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nat_mm.models import NAT, DiNAT, DiNAT_s, NABackbone, NATLayer, NeighborhoodAttention2D
from nat_mm.models import layers as layers_module
from nat_mm.testing.official import NAT_OFFICIAL, nat_official_shapes

REPO = Path(__file__).resolve().parents[2]

CLASSES = {'NAT': NAT, 'DiNAT': DiNAT}


@functools.lru_cache(maxsize=2)
def built(cls_name, arch):
    torch.manual_seed(0)
    return CLASSES[cls_name](arch=arch).eval()


def tiny_nat(**kwargs):
    """A 1-block-per-level NAT, for tests about mechanics rather than architecture."""
    torch.manual_seed(0)
    cfg = dict(arch='mini', embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
               drop_path_rate=0.)
    cfg.update(kwargs)
    return NAT(**cfg)


def expected_shapes(C, H, W, batch=1):
    shapes, h, w = [], math.ceil(H / 4), math.ceil(W / 4)
    for i in range(4):
        shapes.append((batch, C * 2**i, h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return shapes


ALL_ARCHS = list(NAT_OFFICIAL)
SMALL_SIZE, ODD_SIZES = (64, 50), [(333, 517), (97, 1000)]


def _shape_cases():
    """Every arch at 64x50 (maps below k on levels 2-3); the odd sizes for every arch, the
    18-block-deep archs marked slow (the mini archs keep the odd sizes in the fast set)."""
    for key in ALL_ARCHS:
        arch_id = f'{key[0]}-{key[1]}'
        yield pytest.param(key, SMALL_SIZE, id=f'{arch_id}-64x50')
        for size in ODD_SIZES:
            marks = () if key[1] == 'mini' else pytest.mark.slow
            yield pytest.param(key, size, id=f'{arch_id}-{size[0]}x{size[1]}', marks=marks)


@pytest.mark.parametrize('key,size', list(_shape_cases()))
def test_output_shapes_any_size(key, size):
    model = built(*key)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert isinstance(outs, tuple)
    assert [tuple(o.shape) for o in outs] == expected_shapes(NAT_OFFICIAL[key]['C'], *size)
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('key', ALL_ARCHS, ids=lambda k: f'{k[0]}-{k[1]}')
def test_state_dict_names_are_official(key):
    model = built(*key)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == nat_official_shapes(**NAT_OFFICIAL[key])


def test_official_layout_state_dict_loads_without_missing_keys():
    shapes = nat_official_shapes(**NAT_OFFICIAL[('NAT', 'mini')])
    official = {k: torch.randn(s) for k, s in shapes.items()}
    official.update({'norm.weight': torch.ones(512), 'norm.bias': torch.zeros(512),
                     'head.weight': torch.zeros(1000, 512), 'head.bias': torch.zeros(1000)})
    model = NAT(arch='mini')
    result = model.load_state_dict(official, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ['head.bias', 'head.weight', 'norm.bias',
                                              'norm.weight']
    torch.testing.assert_close(model.levels[2].blocks[5].attn.rpb,
                               official['levels.2.blocks.5.attn.rpb'])


def test_output_norms_follow_out_indices():
    model = tiny_nat(out_indices=(1, 3)).eval()
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm1')
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256]


def test_dinat_detection_dilations_at_320x480():
    model = DiNAT(arch='mini', task='det').eval()
    dil = [[b.attn.dilation for b in level.blocks] for level in model.levels]
    assert dil == [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 320, 480))
    assert [tuple(o.shape) for o in outs] == expected_shapes(64, 320, 480)
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('task,level2', [('det', [1, 3, 1, 5, 1, 7] * 3),
                                         ('seg', [1, 2, 1, 3, 1, 4] * 3)])
def test_dinat_presets_for_deeper_archs(task, level2):
    model = DiNAT(arch='tiny', task=task)
    assert [b.attn.dilation for b in model.levels[2].blocks] == level2
    assert model.dilations[2] == level2


def test_small_maps_are_zero_padded_before_qkv_and_cropped():
    """A 5x6 map with k=7: NA on the zero-padded 7x7 map is full attention over 49 tokens."""
    attn = NeighborhoodAttention2D(dim=8, num_heads=2, kernel_size=7).eval()
    x = torch.randn(1, 5, 6, 8)
    out = attn(x)
    xp = F.pad(x, (0, 0, 0, 1, 0, 2))  # bottom/right to 7x7
    q, k, v = attn.qkv(xp).reshape(1, 49, 3, 2, 4).unbind(2)
    pos = torch.stack(torch.meshgrid(torch.arange(7), torch.arange(7), indexing='ij'), -1)
    rel = pos.reshape(49, 1, 2) * -1 + pos.reshape(1, 49, 2) + 6  # key - query + k - 1
    bias = attn.rpb[:, rel[..., 0], rel[..., 1]]  # [heads, 49, 49]
    logits = torch.einsum('qhd,khd->hqk', q[0] * attn.scale, k[0]) + bias
    ref = torch.einsum('hqk,khd->qhd', logits.softmax(-1), v[0]).reshape(7, 7, 8)
    ref = attn.proj(ref[:5, :6])
    assert out.shape == (1, 5, 6, 8)
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-5)


def test_attention_dropout_path_matches_fused_path():
    attn = NeighborhoodAttention2D(dim=16, num_heads=2, kernel_size=3, dilation=2,
                                   attn_drop=1e-12)
    x = torch.randn(2, 9, 11, 16)
    fused = attn.eval()(x)
    unfused = attn.train()(x)  # na2d_qk -> softmax -> dropout (p ~ 0) -> na2d_av
    torch.testing.assert_close(unfused, fused, atol=1e-5, rtol=1e-5)


def frozen_prefixes(frozen_stages):
    if frozen_stages < 0:
        return ()
    return ('patch_embed.', 'pos_drop.') + tuple(p for i in range(frozen_stages)
                                     for p in (f'levels.{i}.', f'norm{i}.'))


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages(frozen_stages):
    model = tiny_nat(frozen_stages=frozen_stages)
    model.train()
    prefixes = frozen_prefixes(frozen_stages)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(prefixes)), name
    for name, m in model.named_modules():
        if name:
            assert m.training == (not (name + '.').startswith(prefixes)), name
    outs = model(torch.randn(1, 3, 64, 48))
    if frozen_stages < 4:
        sum(o.sum() for o in outs).backward()
        for name, p in model.named_parameters():
            assert (p.grad is None) == name.startswith(prefixes), name
    else:
        assert not any(o.requires_grad for o in outs)


def test_norm_eval_keeps_norms_in_eval_mode():
    model = tiny_nat(norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and not any(m.training for m in norms)
    assert model.levels[0].blocks[0].attn.training


def test_with_cp_same_outputs_and_grads(monkeypatch):
    calls = []
    real = layers_module.checkpoint
    monkeypatch.setattr(layers_module, 'checkpoint',
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    plain, cp = tiny_nat(), tiny_nat(with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 56)
    results = []
    for model in (plain, cp):
        outs = model.train()(x)
        sum((o * torch.linspace(0, 1, o.shape[-1])).sum() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == 4 and all(kw == {'use_reentrant': False} for kw in calls)
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)
    with torch.no_grad():
        cp(x)
    assert len(calls) == 4  # no recomputation bookkeeping without grad


def test_backward_through_whole_backbone():
    model = NAT(arch='mini', drop_path_rate=0.).train()  # no branch dropped: all grads > 0
    outs = model(torch.randn(1, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_autocast_bf16_cpu():
    """bf16 autocast against the float64 model with the same weights.

    bf16 keeps 8 significant bits: each rounding errs by at most eps/2 relative (eps = 2**-7).
    Before output i the activations go through about 2 + i + 5 * (i + 1) bf16 stages (the stem's
    two convs, i downsamplers, and per NAT layer qkv, NA, proj, fc1, fc2); independent rounding
    errors add like a random walk, so the relative RMS error stays near eps/2 * sqrt(stages).
    We allow eps * sqrt(stages) (twice that), and 4 times it for the largest single error.
    """
    model = tiny_nat().eval()
    for m in model.modules():
        if isinstance(m, NeighborhoodAttention2D):
            torch.nn.init.normal_(m.rpb)  # an rpb of order 1, so that it matters
    reference = copy.deepcopy(model).double()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = reference(x.double())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
    eps = torch.finfo(torch.bfloat16).eps
    for i, (o, r) in enumerate(zip(outs, ref)):
        assert o.dtype == torch.bfloat16 and o.shape == r.shape
        tol = eps * math.sqrt(2 + i + 5 * (i + 1))
        err = o.double() - r
        rms = r.square().mean().sqrt()
        assert err.square().mean().sqrt() < tol * rms, (i, err.square().mean().sqrt() / rms, tol)
        assert err.abs().max() < 4 * tol * rms, (i, err.abs().max() / rms, 4 * tol)


def test_channels_last_input():
    model = tiny_nat().eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        a = model(x)
        b = model(x.contiguous(memory_format=torch.channels_last))
    for o, r in zip(a, b):
        torch.testing.assert_close(o, r)


def test_init_weights_from_scratch():
    model = tiny_nat(embed_dims=64, num_heads=(2, 4, 8, 16))
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight)
    model.init_weights()
    qkv = model.levels[3].blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002
    assert torch.all(qkv.bias == 0)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0)
               for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    rpb = torch.cat([b.attn.rpb.flatten() for lv in model.levels for b in lv.blocks])
    assert abs(rpb.std().item() - 0.02) < 0.003


def test_layer_scale_gammas():
    layer = NATLayer(dim=32, num_heads=1, layer_scale=1e-5)
    assert torch.all(layer.gamma1 == 1e-5) and torch.all(layer.gamma2 == 1e-5)
    assert not hasattr(NATLayer(dim=32, num_heads=1), 'gamma1')
    assert not hasattr(NAT(arch='small', layer_scale=0, depths=(1, 1, 1, 1)).levels[0]
                       .blocks[0], 'gamma1')


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), ValueError, r"unknown arch 'huge'.*'base', 'mini', 'small', 'tiny'"),
    (dict(frozen_stages=5), ValueError, r'frozen_stages must be in range\(-1, 5\), got '
     r'frozen_stages=5'),
    (dict(frozen_stages=1.0), TypeError, 'frozen_stages must be an int'),
    (dict(out_indices=(0, 4)), ValueError, r'out_indices must be in range\(0, 4\)'),
    (dict(dilations=[[1, 2, 1]]), ValueError, 'one list per level'),
    (dict(dilations=[[1, 2], [1] * 4, [1] * 6, [1] * 5]), ValueError,
     r'dilations\[0\] must hold one int per block \(depths\[0\]=3\)'),
    (dict(dilations=[[1, 0, 1], [1] * 4, [1] * 6, [1] * 5]), ValueError,
     r'dilations must be >= 1, got 0'),
    (dict(dilations=[[1, 2.0, 1], [1] * 4, [1] * 6, [1] * 5]), TypeError,
     'dilations must be ints'),
    (dict(num_heads=(2, 4, 8)), ValueError, 'one entry per level'),
    (dict(num_heads=(3, 4, 8, 16)), ValueError, 'num_heads must divide dim, got dim=64'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        NAT(**{'arch': 'mini', **kwargs})


def test_dinat_bad_task_and_unknown_depths():
    with pytest.raises(ValueError, match=r"unknown task 'cls'; valid tasks are \['det', 'seg'\]"):
        DiNAT(arch='mini', task='cls')
    with pytest.raises(ValueError, match=r"no 'det' dilation preset for depths=\[2, 2, 6, 2\]"):
        DiNAT(depths=(2, 2, 6, 2))
    with pytest.raises(ValueError, match="unknown arch 'huge'.*'large'"):
        DiNAT(arch='huge')


# --- the shared base: NAT and DiNAT_s are siblings ------------------------------------------

def tiny_dinat_s(**kwargs):
    """A 1-block-per-level DiNAT_s, the counterpart of :func:`tiny_nat`."""
    torch.manual_seed(0)
    cfg = dict(arch='tiny', embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
               dilations=[[1]] * 4, drop_path_rate=0.)
    cfg.update(kwargs)
    return DiNAT_s(**cfg)


SIBLINGS = {'NAT': tiny_nat, 'DiNAT_s': tiny_dinat_s}


def test_dinat_s_is_a_sibling_of_nat():
    assert not issubclass(DiNAT_s, NAT) and issubclass(DiNAT, NAT)
    for cls in (NAT, DiNAT, DiNAT_s):
        assert issubclass(cls, NABackbone)
        for name in ('train', '_freeze_stages', 'init_weights', 'forward', 'get_arch_setting'):
            assert name in vars(NABackbone) and name not in vars(cls), (cls.__name__, name)


@pytest.mark.parametrize('cls_name', list(SIBLINGS))
def test_freezing_and_train_through_the_base(cls_name):
    """frozen_stages=2 with norm_eval: the base freezes the stem, levels 0-1 and norm0/norm1 of
    either class (whatever its levels are called), and ``train()`` keeps them so."""
    model = SIBLINGS[cls_name](frozen_stages=2, norm_eval=True, out_indices=(1, 2, 3))
    levels_name = 'levels' if cls_name == 'NAT' else 'layers'
    assert model.levels is getattr(model, levels_name)
    frozen = ('patch_embed.', f'{levels_name}.0.', f'{levels_name}.1.', 'norm1.')
    for _ in range(2):  # and again after eval() -> train()
        assert model.train() is model
        for name, p in model.named_parameters():
            assert p.requires_grad == (not name.startswith(frozen)), name
        assert not model.patch_embed.training and not model.levels[1].training
        assert model.levels[2].blocks[0].attn.training and not model.norm2.training  # norm_eval
        model.eval()
        assert not any(m.training for m in model.modules())
    outs = model.train()(torch.randn(1, 3, 40, 56))
    assert [o.shape[1] for o in outs] == [64, 128, 256]
    sum(o.sum() for o in outs).backward()
    assert all((p.grad is None) == name.startswith(frozen)
               for name, p in model.named_parameters())


@pytest.mark.parametrize('cls_name', list(SIBLINGS))
def test_base_checks_and_init_for_both(cls_name):
    build = SIBLINGS[cls_name]
    with pytest.raises(ValueError, match=rf'{cls_name}: frozen_stages must be in range\(-1, 5\)'):
        build(frozen_stages=5)
    with pytest.raises(TypeError, match=f'{cls_name}: out_indices must be ints'):
        build(out_indices=(0, True))
    with pytest.raises(ValueError, match=rf'{cls_name}: dilations\[1\] must hold one int'):
        build(dilations=[[1], [1, 1], [1], [1]])
    model = build(out_indices=2)
    assert model.out_indices == (2,) and model.num_features == [32, 64, 128, 256]
    model.init_weights()
    qkv = model.levels[0].blocks[0].attn.qkv
    assert torch.all(qkv.bias == 0) and torch.all(model.norm2.weight == 1)


@pytest.mark.slow  # a subprocess: 6-8 s here
def test_layering_models_import_without_openmmlab():
    code = ('import sys\n'
            "for name in ('mmdet', 'mmseg', 'mmengine', 'mmcv'):\n"
            '    sys.modules[name] = None\n'
            'import nat_mm.ops, nat_mm.models, nat_mm.models.convert, nat_mm\n'
            'assert nat_mm.mm is None\n'
            "m = nat_mm.models.NAT(arch='mini', depths=(1, 1, 1, 1))\n"
            'import torch\n'
            'print(len(m(torch.randn(1, 3, 32, 32))))\n'
            # the Triton kernels are imported on first use on a GPU only (triton itself may be:
            # torchvision, under timm, imports torch._dynamo, which imports it)
            "assert 'nat_mm.ops._triton_kernels' not in sys.modules, 'CPU path: kernels'\n"
            "assert 'nat_mm.ops._triton' not in sys.modules, 'CPU path: triton backend'\n")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '4'


# --- backbone and layer arguments -----------------------------------------------------------

def _attention_reference(attn, x, scale):
    """NeighborhoodAttention2D's output from the float64 gather oracle (maps >= k)."""
    from nat_mm.testing.na_reference import reference_na2d
    B, H, W, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, H, W, 3, attn.num_heads, C // attn.num_heads).unbind(3)
    k2 = (attn.kernel_size, ) * 2
    out = reference_na2d(q.double(), k.double(), v.double(), k2, (attn.dilation, ) * 2,
                         attn.rpb.double(), scale=scale)
    return attn.proj(out.float().reshape(B, H, W, C))


@pytest.mark.parametrize('kernel_size', [5, 9])
@pytest.mark.parametrize('qk_scale', [None, 0.3], ids=['default_scale', 'qk_scale'])
def test_attention_kernel_size_and_qk_scale(kernel_size, qk_scale):
    attn = NeighborhoodAttention2D(dim=16, num_heads=2, kernel_size=kernel_size, dilation=1,
                                   qk_scale=qk_scale).eval()
    torch.nn.init.normal_(attn.rpb)
    assert attn.rpb.shape == (2, 2 * kernel_size - 1, 2 * kernel_size - 1)
    x = torch.randn(2, 11, 13, 16)
    scale = 8**-0.5 if qk_scale is None else qk_scale
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _attention_reference(attn, x, scale), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize('kernel_size', [5, 9])
def test_backbone_kernel_size(kernel_size):
    model = tiny_nat(kernel_size=kernel_size).eval()
    attns = [m for m in model.modules() if isinstance(m, NeighborhoodAttention2D)]
    assert len(attns) == 4 and all(a.kernel_size == kernel_size for a in attns)
    assert all(a.rpb.shape[1:] == (2 * kernel_size - 1, ) * 2 for a in attns)
    outs = model(torch.randn(1, 3, 97, 131))
    assert [tuple(o.shape) for o in outs] == expected_shapes(32, 97, 131)


def test_backbone_in_channels():
    model = tiny_nat(in_channels=1).eval()
    assert model.patch_embed.proj[0].weight.shape == (16, 1, 3, 3)
    x = torch.randn(2, 1, 40, 56)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == expected_shapes(32, 40, 56, batch=2)
    with pytest.raises(RuntimeError, match='channels'):
        model(torch.randn(1, 3, 40, 56))


def test_backbone_qkv_bias_false():
    model = tiny_nat(qkv_bias=False)
    attns = [m for m in model.modules() if isinstance(m, NeighborhoodAttention2D)]
    assert attns and all(a.qkv.bias is None and a.proj.bias is not None for a in attns)
    assert not any(k.endswith('qkv.bias') for k in model.state_dict())
    outs = model(torch.randn(1, 3, 32, 32))
    sum(o.sum() for o in outs).backward()
    assert all(a.qkv.weight.grad is not None for a in attns)


def test_drop_path_schedule():
    """Stochastic depth rises linearly from 0 (first layer) to drop_path_rate (last layer)."""
    model = NAT(arch='mini', drop_path_rate=0.3)
    layers = [b for level in model.levels for b in level.blocks]
    rates = [0. if isinstance(b.drop_path, torch.nn.Identity) else b.drop_path.drop_prob
             for b in layers]
    n = len(layers)
    assert n == 18
    assert rates == pytest.approx([0.3 * i / (n - 1) for i in range(n)])
    assert isinstance(layers[0].drop_path, torch.nn.Identity)
    # and it drops whole residual branches per sample, in training only: with p = 0.5 both
    # branches of a layer are dropped (output = input) for about a quarter of the samples
    block = NATLayer(dim=8, num_heads=1, drop_path=0.5)
    x = torch.randn(64, 7, 7, 8)
    with torch.no_grad():
        identity = (block.train()(x) == x).flatten(1).all(1)
        assert not (block.eval()(x) == x).flatten(1).all(1).any()
    assert 4 <= identity.sum() <= 32, identity.sum()


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(dim=0, num_heads=1), ValueError, 'dim must be >= 1, got dim=0'),
    (dict(dim=16.0, num_heads=2), TypeError, 'dim must be an int, got 16.0'),
    (dict(dim=16, num_heads=3), ValueError, 'num_heads must divide dim, got dim=16, num_heads=3'),
    (dict(dim=16, num_heads=True), TypeError, 'num_heads must be an int, got True'),
    (dict(dim=16, num_heads=2, kernel_size=4), ValueError, 'kernel_size must be odd'),
    (dict(dim=16, num_heads=2, kernel_size=1), ValueError, 'kernel_size must be >= 3'),
    (dict(dim=16, num_heads=2, kernel_size=(7, 7)), TypeError, 'kernel_size must be an int'),
    (dict(dim=16, num_heads=2, dilation=0), ValueError, 'dilation must be >= 1, got dilation=0'),
    (dict(dim=16, num_heads=2, dilation=2.0), TypeError, 'dilation must be an int'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_attention_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=f'NeighborhoodAttention2D: {match}'):
        NeighborhoodAttention2D(**kwargs)

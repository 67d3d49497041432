"""Mask2Former with DiNAT-Large (configs/*/mask2former_dinat_large_*.py): parameter counts, the
official recipe, one training step and one predict per config with the backbone shrunk, loading
the ImageNet-22k checkpoints into the 11x11 backbone (rpb interpolation), and the converter of the
official detectron2 Mask2Former checkpoints."""
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

import nat_mm  # noqa: E402, F401
from nat_mm.mm import (DiNAT, convert_d2_mask2former, interpolate_rpb,  # noqa: E402
                       load_pretrained)
from nat_mm.mm import data as synthetic  # noqa: E402
from nat_mm.mm.build import registry_of, task_of  # noqa: E402
from nat_mm.mm.zoo import load_metafile  # noqa: E402
from nat_mm.models import DiNAT as PlainDiNAT  # noqa: E402
from nat_mm.testing.configs import load_released_config as load  # noqa: E402
from nat_mm.testing.tools import tool_cli  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# config -> task (the papers' parameter counts are in configs/metafile.yml)
CONFIGS = {
    'det/mask2former_dinat_large_coco_panoptic.py': 'panoptic',
    'det/mask2former_dinat_large_coco_instance.py': 'instance',
    'seg/mask2former_dinat_large_ade20k_160k.py': 'semantic',
    'seg/mask2former_dinat_large_cityscapes_90k.py': 'semantic',
}
# The papers' parameter counts: configs/metafile.yml's Paper Parameters (M).
PAPER_PARAMS = {config: load_metafile()[config].paper_params_m * 1e6 for config in CONFIGS}
# The official YAMLs' backbone block (the same in all of them).
DILATIONS = [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3],
             [1, 1, 1, 1, 1]]
# Shrunk backbone for the CPU: the mini widths, one or two layers per level, still the 11x11
# kernel and dilations (maps smaller than kernel * dilation take the padding path).
MINI = dict(arch='mini', depths=(1, 1, 2, 1), dilations=[[2], [1], [1, 2], [1]])
MINI_CHANNELS = [64, 128, 256, 512]
H, W = 64, 96


def registry(cfg):
    return registry_of(task_of(cfg))


def head_cfg(cfg):
    return cfg.model.panoptic_head if cfg.default_scope == 'mmdet' else cfg.model.decode_head


def shrink(cfg, queries=10, decoder_layers=3):
    """The config with the backbone shrunk (MINI) and a lighter head for the CPU."""
    cfg.model.backbone.update(MINI)
    head = head_cfg(cfg)
    head.in_channels = MINI_CHANNELS
    head.num_queries = queries
    head.transformer_decoder.num_layers = decoder_layers
    (cfg.model.train_cfg if cfg.default_scope == 'mmdet' else head.train_cfg).num_points = 256
    if cfg.default_scope == 'mmdet':  # LSJ pads every training batch to 1024x1024
        cfg.model.data_preprocessor.batch_augments[0].size = (H, W)
    else:
        cfg.model.data_preprocessor.size = (H, W)
    return cfg


def test_every_mask2former_config_is_here():
    """CONFIGS covers every released Mask2Former config of configs/metafile.yml."""
    released = {c for c in load_metafile() if osp.basename(c).startswith('mask2former_')}
    assert set(CONFIGS) == released


@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_param_count(config):
    """Built on the meta device (no memory, no init): within 1% of the papers' count."""
    cfg = load(config)
    with torch.device('meta'):
        model = registry(cfg).build(cfg.model)
    assert type(model.backbone).__name__ == 'DiNAT'
    params = sum(p.numel() for p in model.parameters())
    paper = PAPER_PARAMS[config]
    assert abs(params - paper) <= 0.01 * paper, f'{config}: {params / 1e6:.2f}M'
    rpb = model.backbone.levels[0].blocks[0].attn.rpb
    assert rpb.shape == (6, 21, 21)  # 11x11 kernel


@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_recipe(config):
    """The official YAML's backbone block and detectron2's Mask2Former solver."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    assert cfg.custom_imports == dict(imports=['nat_mm'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.kernel_size) == ('DiNAT', 'large', 11)
    assert backbone.dilations == DILATIONS and backbone.drop_path_rate == 0.3
    assert backbone.init_cfg.checkpoint.endswith(
        'imagenet22k/dinat_large_in22k_224_11x11interp.pth')
    assert head_cfg(cfg).in_channels == [192, 384, 768, 1536]
    assert head_cfg(cfg).num_queries == (200 if cfg.default_scope == 'mmdet' else 100)
    optim = cfg.optim_wrapper
    assert optim.type == 'OptimWrapper'  # AMP off in the DiNAT YAMLs
    assert optim.optimizer == dict(type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8,
                                   betas=(0.9, 0.999))
    assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
    keys = optim.paramwise_cfg.custom_keys
    assert keys['backbone'] == dict(lr_mult=0.1, decay_mult=1.0)
    assert keys['backbone.levels.2.blocks.17.norm'] == dict(lr_mult=0.1, decay_mult=0.0)
    assert not any('relative_position' in k or 'stages' in k for k in keys)  # no Swin keys
    assert optim.paramwise_cfg.norm_decay_mult == 0.0
    assert cfg.train_dataloader.batch_size * 8 == 16
    if cfg.default_scope == 'mmdet':
        assert cfg.train_cfg.max_iters == 737500
        assert cfg.param_scheduler.milestones == [655556, 710184]
        lsj = [t for t in cfg.train_pipeline if t.type == 'RandomResize'][0]
        assert lsj.scale == (1024, 1024) and lsj.ratio_range == (0.1, 2.0)
    else:
        ade = 'ade20k' in config
        assert cfg.train_cfg.max_iters == (160000 if ade else 90000)
        assert cfg.param_scheduler[0].type == 'PolyLR' and cfg.param_scheduler[0].power == 0.9
        crop = [t for t in cfg.train_pipeline if t.type == 'RandomCrop'][0]
        assert crop.crop_size == ((640, 640) if ade else (512, 1024))
        assert crop.cat_max_ratio == 1.0  # detectron2's SINGLE_CATEGORY_MAX_AREA


def _optimizer_groups(model, cfg):
    from mmengine.optim import build_optim_wrapper
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g['lr'], g['weight_decay'])
            for g in wrapper.optimizer.param_groups for p in g['params']}


def test_optimizer_param_groups():
    """lr x0.1 on the backbone, no decay on norms and query/level embeddings, decay on rpb (as
    detectron2's train_net.py, which exempts only Swin's bias tables)."""
    cfg = shrink(load('det/mask2former_dinat_large_coco_instance.py'))
    model = registry(cfg).build(cfg.model)
    groups = _optimizer_groups(model, cfg)
    assert groups['backbone.levels.0.blocks.0.attn.qkv.weight'] == (1e-5, 0.05)
    assert groups['backbone.levels.0.blocks.0.attn.rpb'] == (1e-5, 0.05)
    assert groups['backbone.levels.2.blocks.1.norm2.weight'] == (1e-5, 0.)
    assert groups['backbone.levels.0.downsample.norm.bias'] == (1e-5, 0.)
    assert groups['backbone.norm3.weight'] == (1e-5, 0.)
    assert groups['backbone.patch_embed.norm.weight'] == (1e-5, 0.)
    assert groups['panoptic_head.query_feat.weight'] == (1e-4, 0.)
    assert groups['panoptic_head.level_embed.weight'] == (1e-4, 0.)
    assert groups['panoptic_head.transformer_decoder.layers.0.norms.0.weight'] == (1e-4, 0.)
    assert groups['panoptic_head.pixel_decoder.input_convs.0.gn.weight'] == (1e-4, 0.)
    assert groups['panoptic_head.cls_embed.weight'] == (1e-4, 0.05)


def det_batch(model, num_things, with_semantic):
    packed = synthetic.det_batch((H, W), [3, 2], num_things, with_semantic=with_semantic)
    return model.data_preprocessor(packed, True)


def seg_batch(model, num_classes):
    packed = synthetic.seg_batch((H, W), 2, num_classes, ignore_rows=4)  # some ignored pixels
    return model.data_preprocessor(packed, True)


@pytest.mark.slow
@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_train_step_and_predict(config):
    """One training step (loss, backward) and one predict, with the backbone shrunk, on two
    synthetic 64x96 images (instances with masks, panoptic stuff labels, semantic labels)."""
    cfg = shrink(load(config))
    task = CONFIGS[config]
    model = registry(cfg).build(cfg.model)
    model.init_weights()
    head = head_cfg(cfg)
    if cfg.default_scope == 'mmdet':
        data = det_batch(model, head.num_things_classes, with_semantic=task == 'panoptic')
    else:
        data = seg_batch(model, head.num_classes)

    model.train()
    losses = model(**data, mode='loss')
    names = {k.split('.')[-1] for k in losses}  # mmseg prefixes them with 'decode.'
    assert {'loss_cls', 'loss_mask', 'loss_dice'} <= names
    assert any(k.endswith('d0.loss_mask') for k in losses)  # deep supervision
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss), losses
    loss.backward()
    grad = model.backbone.patch_embed.proj[0].weight.grad  # reaches the backbone's stem
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 2
    if task == 'panoptic':
        assert results[0].pred_panoptic_seg.sem_seg.shape == (1, H, W)
        assert {'masks', 'labels', 'scores', 'bboxes'} <= set(results[0].pred_instances.keys())
    elif task == 'instance':
        pred = results[0].pred_instances
        assert pred.masks.shape[1:] == (H, W) and len(pred.scores) == len(pred.labels) > 0
    else:
        seg = results[0].pred_sem_seg.data
        assert seg.shape == (1, H, W) and int(seg.max()) < head.num_classes


# --- ImageNet-22k checkpoints into the 11x11 backbone ---

SMALL_L = dict(arch='large', depths=(1, 1, 2, 1), dilations=[[1], [1], [1, 1], [1]],
               drop_path_rate=0.)


def _cls_checkpoint(kernel_size, path):
    """An official-layout classification state dict (+ norm.*, head.*) of a DiNAT-L shaped
    backbone (fewer layers) with ``kernel_size``."""
    torch.manual_seed(1)
    sd = PlainDiNAT(kernel_size=kernel_size, out_indices=(3,), **SMALL_L).state_dict()
    sd = {k.replace('norm3.', 'norm.'): torch.randn_like(v) for k, v in sd.items()}
    sd.update({'head.weight': torch.randn(10, 1536), 'head.bias': torch.randn(10)})
    torch.save({'model': sd}, path)
    return sd


def test_interpolated_11x11_checkpoint_loads_as_is(tmp_path):
    """dinat_large_in22k_224_11x11interp.pth: rpb tables already 21x21."""
    sd = _cls_checkpoint(11, tmp_path / 'in22k_11x11.pth')
    model = DiNAT(kernel_size=11, **SMALL_L)
    missing, unexpected = load_pretrained(model, str(tmp_path / 'in22k_11x11.pth'))
    assert sorted(missing) == [f'norm{i}.{p}' for i in range(4) for p in ('bias', 'weight')]
    assert sorted(unexpected) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    for key, value in model.state_dict().items():
        if key in sd:
            torch.testing.assert_close(value, sd[key], rtol=0, atol=0, msg=key)


def test_7x7_checkpoint_is_interpolated_into_11x11(tmp_path):
    """dinat_large_in22k_224.pth (7x7, 13x13 tables) into the 11x11 model: every rpb resized
    bicubically (what the official 11x11interp file is), every other weight as is."""
    sd = _cls_checkpoint(7, tmp_path / 'in22k_7x7.pth')
    model = DiNAT(kernel_size=11, **SMALL_L)
    load_pretrained(model, str(tmp_path / 'in22k_7x7.pth'))
    rpb_keys = [k for k in sd if k.endswith('attn.rpb')]
    assert len(rpb_keys) == 5
    for key, value in model.state_dict().items():
        if key in rpb_keys:
            assert sd[key].shape[1:] == (13, 13) and value.shape[1:] == (21, 21)
            expected = F.interpolate(sd[key][None], size=(21, 21), mode='bicubic',
                                     align_corners=False)[0]
            torch.testing.assert_close(value, expected, msg=key)
        elif key in sd:
            torch.testing.assert_close(value, sd[key], rtol=0, atol=0, msg=key)


def test_interpolate_rpb():
    table = torch.full((3, 13, 13), 0.25)
    resized = interpolate_rpb(table, 11)
    assert resized.shape == (3, 21, 21)
    torch.testing.assert_close(resized, torch.full((3, 21, 21), 0.25))  # constants stay
    assert interpolate_rpb(table, 7) is table
    ramp = torch.linspace(-1, 1, 13).expand(1, 13, 13)
    down = interpolate_rpb(ramp, 5)  # the other way round too
    assert down.shape == (1, 9, 9) and torch.all(down[0, :, 1:] >= down[0, :, :-1])
    with pytest.raises(ValueError, match='rpb must be'):
        interpolate_rpb(torch.zeros(3, 12, 12), 11)
    with pytest.raises(ValueError, match='kernel_size'):
        interpolate_rpb(table, 0)


def test_rpb_heads_mismatch_raises(tmp_path):
    _cls_checkpoint(7, tmp_path / 'in22k_7x7.pth')
    model = DiNAT(kernel_size=11, **dict(SMALL_L, num_heads=(3, 12, 24, 48)))
    with pytest.raises(ValueError, match='only the kernel size can differ'):
        load_pretrained(model, str(tmp_path / 'in22k_7x7.pth'))


# --- detectron2 Mask2Former checkpoints ---
# Modules with the attribute names of the official DiNAT D2 wrapper and of Mask2Former's
# detectron2 code (mask2former/modeling/pixel_decoder/msdeformattn.py,
# transformer_decoder/mask2former_transformer_decoder.py, maskformer_model.py), so their
# state_dict() has exactly the names and shapes of the official checkpoints.


class D2Conv2d(nn.Conv2d):
    """detectron2.layers.Conv2d: a Conv2d holding its norm as ``.norm``."""

    def __init__(self, *args, norm=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm


class MSDeformAttn(nn.Module):
    def __init__(self, d_model=256, n_levels=3, n_heads=8, n_points=4):
        super().__init__()
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)


class MSDeformAttnEncoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)


class D2PixelDecoder(nn.Module):
    """MSDeformAttnPixelDecoder: res3-res5 through the deformable encoder, res2 by the FPN."""

    def __init__(self, in_channels, conv_dim=256, layers=6):
        super().__init__()
        self.input_proj = nn.ModuleList([  # coarsest (res5) first
            nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for c in in_channels[1:][::-1]])
        self.transformer = nn.Module()
        self.transformer.level_embed = nn.Parameter(torch.zeros(3, conv_dim))
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layers = nn.ModuleList(
            [MSDeformAttnEncoderLayer(conv_dim) for _ in range(layers)])
        self.mask_features = nn.Conv2d(conv_dim, conv_dim, 1)
        self.adapter_1 = D2Conv2d(in_channels[0], conv_dim, 1, bias=False,
                                  norm=nn.GroupNorm(32, conv_dim))
        self.layer_1 = D2Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False,
                                norm=nn.GroupNorm(32, conv_dim))


class D2Predictor(nn.Module):
    """MultiScaleMaskedTransformerDecoder."""

    def __init__(self, num_classes, num_queries, layers, hidden=256, ffn=2048):
        super().__init__()
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        for _ in range(layers):
            self_layer, cross_layer, ffn_layer = nn.Module(), nn.Module(), nn.Module()
            self_layer.self_attn = nn.MultiheadAttention(hidden, 8)
            self_layer.norm = nn.LayerNorm(hidden)
            cross_layer.multihead_attn = nn.MultiheadAttention(hidden, 8)
            cross_layer.norm = nn.LayerNorm(hidden)
            ffn_layer.linear1 = nn.Linear(hidden, ffn)
            ffn_layer.linear2 = nn.Linear(ffn, hidden)
            ffn_layer.norm = nn.LayerNorm(hidden)
            self.transformer_self_attention_layers.append(self_layer)
            self.transformer_cross_attention_layers.append(cross_layer)
            self.transformer_ffn_layers.append(ffn_layer)
        self.decoder_norm = nn.LayerNorm(hidden)
        self.query_feat = nn.Embedding(num_queries, hidden)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.level_embed = nn.Embedding(3, hidden)
        self.input_proj = nn.ModuleList([nn.Sequential() for _ in range(3)])
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.mask_embed = nn.Module()
        self.mask_embed.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(3)])


def d2_state_dict(num_classes, num_queries, decoder_layers):
    """A detectron2 MaskFormer state dict (random values) with the shrunk backbone."""
    model = nn.Module()
    model.backbone = PlainDiNAT(kernel_size=11, drop_path_rate=0., **MINI)
    model.sem_seg_head = nn.Module()
    model.sem_seg_head.pixel_decoder = D2PixelDecoder(MINI_CHANNELS)
    model.sem_seg_head.predictor = D2Predictor(num_classes, num_queries, decoder_layers)
    model.criterion = nn.Module()
    model.criterion.register_buffer('empty_weight', torch.ones(num_classes + 1))
    torch.manual_seed(2)
    return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('config', ['det/mask2former_dinat_large_coco_panoptic.py',
                                    'seg/mask2former_dinat_large_ade20k_160k.py'])
def test_d2_checkpoint_converts_to_the_config(config, tmp_path, capsys):
    cfg = shrink(load(config))
    model = registry(cfg).build(cfg.model)
    head_name = 'panoptic_head' if cfg.default_scope == 'mmdet' else 'decode_head'
    head = getattr(model, head_name)
    d2 = d2_state_dict(head.num_classes, 10, 3)
    converted, unused = convert_d2_mask2former(d2, head=head_name)
    assert unused == ['criterion.empty_weight']
    assert len(converted) == len(d2) - 1  # one target per source key
    model.load_state_dict(converted, strict=True)  # every key, every shape

    def same(ours, theirs):
        torch.testing.assert_close(ours, d2[theirs], rtol=0, atol=0, msg=theirs)

    # where shapes cannot tell two places apart, the values must
    p, pd = 'sem_seg_head.predictor.', 'sem_seg_head.pixel_decoder.'
    layer = head.transformer_decoder.layers[1]
    same(layer.norms[0].weight, p + 'transformer_cross_attention_layers.1.norm.weight')
    same(layer.norms[1].weight, p + 'transformer_self_attention_layers.1.norm.weight')
    same(layer.norms[2].weight, p + 'transformer_ffn_layers.1.norm.weight')
    same(layer.cross_attn.attn.in_proj_weight,
         p + 'transformer_cross_attention_layers.1.multihead_attn.in_proj_weight')
    same(layer.self_attn.attn.in_proj_weight,
         p + 'transformer_self_attention_layers.1.self_attn.in_proj_weight')
    same(head.transformer_decoder.post_norm.bias, p + 'decoder_norm.bias')
    same(head.query_feat.weight, p + 'query_feat.weight')
    same(head.query_embed.weight, p + 'query_embed.weight')
    same(head.level_embed.weight, p + 'level_embed.weight')
    same(head.pixel_decoder.level_encoding.weight, pd + 'transformer.level_embed')
    same(head.pixel_decoder.input_convs[2].gn.bias, pd + 'input_proj.2.1.bias')
    enc = head.pixel_decoder.encoder.layers[5]
    same(enc.norms[0].weight, pd + 'transformer.encoder.layers.5.norm1.weight')
    same(enc.norms[1].weight, pd + 'transformer.encoder.layers.5.norm2.weight')
    same(enc.self_attn.value_proj.weight, pd + 'transformer.encoder.layers.5.self_attn.'
         'value_proj.weight')
    same(enc.self_attn.output_proj.weight, pd + 'transformer.encoder.layers.5.self_attn.'
         'output_proj.weight')
    same(head.pixel_decoder.lateral_convs[0].gn.weight, pd + 'adapter_1.norm.weight')
    same(head.pixel_decoder.output_convs[0].gn.weight, pd + 'layer_1.norm.weight')
    same(head.mask_embed[2].weight, p + 'mask_embed.layers.1.weight')
    same(head.cls_embed.bias, p + 'class_embed.bias')
    same(model.backbone.levels[2].blocks[1].attn.rpb, 'backbone.levels.2.blocks.1.attn.rpb')

    # the CLI: same conversion, reports the key without a counterpart
    convert_checkpoint = tool_cli('convert_checkpoint')
    torch.save({'model': d2, 'iteration': 5}, tmp_path / 'd2.pth')
    assert convert_checkpoint.main([str(tmp_path / 'd2.pth'), str(tmp_path / 'mm.pth'),
                                    '--format', 'd2-mask2former', '--head', head_name]) == 0
    out = capsys.readouterr().out
    assert "without a counterpart (1): ['criterion.empty_weight']" in out
    written = torch.load(tmp_path / 'mm.pth', weights_only=True)['state_dict']
    assert written.keys() == converted.keys()


def test_d2_converter_rejects_bad_input():
    with pytest.raises(ValueError, match='head must be one of'):
        convert_d2_mask2former({'sem_seg_head.x': torch.zeros(1)}, head='roi_head')
    with pytest.raises(ValueError, match='not a detectron2 Mask2Former'):
        convert_d2_mask2former({'backbone.patch_embed.norm.weight': torch.zeros(1)})


@pytest.mark.slow
@pytest.mark.parametrize('config', ['det/mask2former_dinat_large_coco_panoptic.py',
                                    'seg/mask2former_dinat_large_ade20k_160k.py'])
def test_get_flops_counts_the_mask2former_head(config, monkeypatch):
    """tools/get_flops.py runs Mask2Former's pixel and transformer decoders, not only the
    backbone (shrunk here, at 128x192)."""
    from mmengine.analysis import FlopAnalyzer

    from nat_mm.mm import flops as get_flops  # tools/get_flops.py's counting
    analyzers = []

    class SpyAnalyzer(FlopAnalyzer):

        def __init__(self, model, inputs):
            super().__init__(model, inputs)
            analyzers.append(self)

    monkeypatch.setattr(get_flops, 'FlopAnalyzer', SpyAnalyzer)
    cfg = shrink(Config.fromfile(osp.join(ROOT, 'configs', config)))
    flops, params = get_flops.count_flops(cfg, (128, 192))
    by_module = analyzers[0].by_module()
    head = 'model.panoptic_head' if 'det/' in config else 'model.decode_head'
    assert by_module[head + '.pixel_decoder'] > 0 and by_module[head + '.transformer_decoder'] > 0
    assert flops > by_module['model.backbone'] > 0

"""tools/benchmark_model.py: the Swin-T baseline configs, its argument checks, and one tiny run of
a detector and a segmentor, each beside its Swin-T copy, as a user would run it (subprocess).

No timing is asserted (machine noise): only that every model ran in both modes with finite,
positive times and that the JSON says what ran against what.
"""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'benchmark_model.py')
DET = 'configs/det/mask_rcnn_nat_tiny_3x.py'
SEG = 'configs/seg/upernet_nat_tiny_160k.py'
SWIN_WIDTHS = [96, 192, 384, 768]


@pytest.fixture(scope='module')
def bm():
    """tools/benchmark_model.py's library: nat_mm.mm.benchmark."""
    from nat_mm.mm import benchmark
    return benchmark


@pytest.fixture(scope='module')
def cli():
    """tools/benchmark_model.py's command line (its parse_args), in this process."""
    from nat_mm.testing.tools import tool_cli
    return tool_cli('benchmark_model')


def test_swin_baseline_detector(bm):
    cfg = bm.load_benchmark_config(osp.join(ROOT, DET))
    assert cfg.model.backbone.init_cfg is None  # nothing to download
    swin = bm.swin_baseline(cfg)
    backbone = swin.model.backbone
    assert backbone.type == 'mmdet.SwinTransformer'
    assert (backbone.embed_dims, tuple(backbone.depths), tuple(backbone.num_heads)) == (
        96, (2, 2, 6, 2), (3, 6, 12, 24))
    assert (backbone.window_size, backbone.mlp_ratio, backbone.drop_path_rate) == (7, 4, 0.2)
    assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    assert backbone.init_cfg is None and backbone.convert_weights is False
    assert list(swin.model.neck.in_channels) == SWIN_WIDTHS
    # the original config is untouched
    assert cfg.model.backbone.type == 'NAT'
    assert list(cfg.model.neck.in_channels) == [64, 128, 256, 512]


def test_swin_baseline_segmentor(bm):
    cfg = bm.load_benchmark_config(osp.join(ROOT, SEG), shape=(96, 128))
    assert tuple(cfg.model.data_preprocessor.size) == (96, 128)  # the training crop
    swin = bm.swin_baseline(cfg)
    assert swin.model.backbone.type == 'mmseg.SwinTransformer'
    assert list(swin.model.decode_head.in_channels) == SWIN_WIDTHS
    assert swin.model.auxiliary_head.in_channels == 384  # in_index 2
    assert 'convert_weights' not in swin.model.backbone  # mmseg's Swin has no such argument


def test_swin_baseline_refuses_unmappable_channels(bm):
    cfg = bm.load_benchmark_config(osp.join(ROOT, DET),
                                   cfg_options={'model.neck.in_channels': [1, 2, 3]})
    with pytest.raises(ValueError, match=r'model\.neck\.in_channels=\[1, 2, 3\]'):
        bm.swin_baseline(cfg)


def test_clear_pretrained():
    from nat_mm.mm.build import clear_pretrained
    tree = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='x.pth'),
                              pretrained='y.pth'),
                head=dict(init_cfg=[dict(type='Normal', std=0.01),
                                    dict(type='Pretrained', checkpoint='z.pth')]))
    clear_pretrained(tree)
    assert tree == dict(backbone=dict(init_cfg=None, pretrained=None),
                        head=dict(init_cfg=[dict(type='Normal', std=0.01)]))


def test_argument_errors(cli, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(['no/such/config.py'])
    assert 'config not found: no/such/config.py' in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            cli.parse_args([DET, '--amp'])
        assert '--amp needs --device cuda' in capsys.readouterr().err


@pytest.mark.slow
def test_detector_and_segmentor_against_swin(tmp_path):
    out = tmp_path / 'bench.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, TOOL, DET, SEG, '--shape', '64', '96', '--repeats', '1', '--warmup', '0',
         '--swin-baseline', '--json', str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    data = json.loads(out.read_text())

    models = {m['name']: m for m in data['models']}
    det, seg = 'mask_rcnn_nat_tiny_3x', 'upernet_nat_tiny_160k'
    assert set(models) == {det, f'{det} [Swin-T]', seg, f'{seg} [Swin-T]'}
    assert models[det]['backbone'] == 'NAT' and models[seg]['backbone'] == 'NAT'
    assert models[f'{det} [Swin-T]']['backbone'] == 'mmdet.SwinTransformer'
    assert models[f'{seg} [Swin-T]']['backbone'] == 'mmseg.SwinTransformer'
    # Mask R-CNN NAT-Tiny / Swin-T 48M / 48M, UPerNet NAT-Tiny / Swin-T 58M / 60M
    assert [round(models[n]['params_m']) for n in (det, f'{det} [Swin-T]', seg,
                                                   f'{seg} [Swin-T]')] == [48, 48, 58, 60]

    results = {(r['model'], r['mode']): r for r in data['results']}
    assert set(results) == {(name, mode) for name in models for mode in ('infer', 'train')}
    for (name, mode), r in results.items():
        assert len(r['times_ms']) == 1
        assert all(math.isfinite(t) and t > 0 for t in r['times_ms']), r
        assert math.isfinite(r['median_ms']) and r['median_ms'] > 0
        assert math.isfinite(r['peak_mb']) and r['peak_mb'] >= 0
        assert r['batch'] == (1 if mode == 'infer' else 2)  # mmdet's benchmark / config batch
        assert r['baseline'] == (name if name.endswith('[Swin-T]') else f'{name} [Swin-T]')
        assert math.isfinite(r['time_ratio']) and r['time_ratio'] > 0
        if name.endswith('[Swin-T]'):
            assert r['time_ratio'] == 1.0
    assert 'time vs' in proc.stdout and f'{det} [Swin-T]' in proc.stdout

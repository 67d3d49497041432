"""Inference, attention maps and benchmark charts on the demo models (issue 15).

A checkpoint per task comes from a 2-iteration tools/train.py run on the tiny demo-layout data
(nat_mm.testing.tools); then mmdet's DetInferencer / mmseg's MMSegInferencer (mmdet's
demo/image_demo.py pattern) and tools/infer.py run on the val tiles, and
tools/visualize_attention.py draws the demo segmentor's attention.
"""
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

import nat_mm  # noqa: F401
from nat_mm.testing.tools import DET, ROOT, SEG, TOOLS, data_options, tool


@pytest.fixture(scope='module')
def checkpoints(demo_data, tmp_path_factory):
    """``{'det': path, 'seg': path}``: checkpoints written by tools/train.py (2 iterations)."""
    out = {}
    for task, config in (('det', DET), ('seg', SEG)):
        work = tmp_path_factory.mktemp(f'train_{task}')
        tool('tools/train.py', config, '--work-dir', str(work),
             *data_options(config, demo_data, iters=2))
        out[task] = str(work / 'iter_2.pth')
        assert osp.isfile(out[task])
    return out


def _val_images(demo_data):
    import glob
    images = sorted(glob.glob(osp.join(demo_data, 'images', 'val', '*.png')))
    assert len(images) == 2
    return images


@pytest.mark.slow
def test_mm_inferencers_with_our_configs(checkpoints, demo_data, tmp_path):
    """The image_demo.py pattern: ``DetInferencer(model=config, weights=ckpt)(image)``."""
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    image = _val_images(demo_data)[0]
    det = DetInferencer(model=osp.join(ROOT, DET), weights=checkpoints['det'], device='cpu',
                        show_progress=False)
    assert det.model.dataset_meta['classes'] == ('nucleus', )
    result = det(image, out_dir=str(tmp_path / 'det'), no_save_pred=False)
    pred = result['predictions'][0]
    assert len(pred['labels']) == len(pred['scores']) == len(pred['bboxes'])
    assert all(label == 0 for label in pred['labels'])
    assert osp.isfile(tmp_path / 'det' / 'vis' / osp.basename(image))

    seg = MMSegInferencer(model=osp.join(ROOT, SEG), weights=checkpoints['seg'], device='cpu')
    assert list(seg.model.dataset_meta['classes']) == ['background', 'nucleus']
    result = seg(image, out_dir=str(tmp_path / 'seg'))
    labels = np.asarray(result['predictions'])
    assert labels.shape == (128, 128) and set(np.unique(labels)) <= {0, 1}
    assert osp.isfile(tmp_path / 'seg' / 'vis' / osp.basename(image))


@pytest.mark.slow
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_infer_tool_on_a_directory(task, checkpoints, demo_data, tmp_path):
    import cv2

    config = DET if task == 'det' else SEG
    out = tmp_path / 'out'
    val = osp.join(demo_data, 'images', 'val')
    proc = tool('tools/infer.py', val, config, checkpoints[task], '--out-dir', str(out))
    assert '2/2' in proc.stdout  # the progress bar over the directory
    summary = json.loads((out / 'results.json').read_text())
    assert summary['task'] == task and len(summary['images']) == 2
    for entry, image in zip(summary['images'], _val_images(demo_data)):
        assert entry['image'] == image
        vis = cv2.imread(entry['vis'])
        assert vis is not None and vis.shape == (128, 128, 3)
        assert not np.array_equal(vis, cv2.imread(image)), 'nothing drawn on the image'
        pred = json.loads(open(entry['pred']).read())
        if task == 'det':
            assert set(pred) >= {'labels', 'scores', 'bboxes', 'masks'}
            n = len(pred['scores'])
            assert len(pred['bboxes']) == len(pred['masks']) == n
            assert entry['num_instances'] == sum(s >= 0.3 for s in pred['scores'])
            for box in pred['bboxes']:
                assert 0 <= box[0] <= box[2] <= 128 and 0 <= box[1] <= box[3] <= 128
        else:
            labels = cv2.imread(entry['label_map'], cv2.IMREAD_UNCHANGED)
            assert labels.shape == (128, 128)
            assert sum(c['pixels'] for c in pred['classes']) == 128 * 128
            for c in pred['classes']:
                assert c['name'] == ('background', 'nucleus')[c['id']]
                assert c['pixels'] == int((labels == c['id']).sum())


@pytest.mark.slow  # subprocesses: 6-8 s each here
def test_infer_tool_errors(tmp_path):
    proc = tool('tools/infer.py', str(tmp_path / 'none'), SEG, str(tmp_path / 'x.pth'),
                '--out-dir', str(tmp_path), check=False)
    assert proc.returncode != 0 and 'checkpoint not found' in proc.stderr


def test_attention_weights_are_the_ops(tmp_path):
    """The recorded weights are softmax(na2d_qk(q * scale, k, rpb)) of each layer's input,
    at the map sizes the backbone pads to."""
    from nat_mm.models import DiNAT
    from nat_mm.models.attention import attention_maps
    from nat_mm.ops import na2d_qk

    backbone = DiNAT(arch='mini', task='seg').eval()
    backbone.init_weights()
    inputs = torch.randn(1, 3, 100, 84)
    captured = {}
    for i, level in enumerate(backbone.levels):
        for j, block in enumerate(level.blocks):
            block.attn.register_forward_pre_hook(
                lambda m, args, key=(i, j): captured.__setitem__(key, args[0].detach()))
    with torch.no_grad():
        eager = backbone(inputs)
    maps = attention_maps(backbone, inputs)
    assert len(maps) == sum(backbone.depths)
    with torch.no_grad():  # the model's outputs are unchanged by recording
        for a, b in zip(backbone(inputs), eager):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for m in maps:
        attn = backbone.levels[m['level']].blocks[m['layer']].attn
        assert m['dilation'] == backbone.dilations[m['level']][m['layer']]
        x = captured[(m['level'], m['layer'])]
        H, W = x.shape[1:3]
        assert m['size'] == (H, W)
        window = attn.kernel_size * attn.dilation
        x = torch.nn.functional.pad(x, (0, 0, 0, max(0, window - W), 0, max(0, window - H)))
        B, Hp, Wp, C = x.shape
        q, k, _ = attn.qkv(x).reshape(B, Hp, Wp, 3, attn.num_heads, -1).unbind(3)
        with torch.no_grad():
            want = na2d_qk(q * attn.scale, k, attn.kernel_size, attn.dilation,
                           rpb=attn.rpb).softmax(-1)[0]
        torch.testing.assert_close(m['weights'], want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(m['weights'].sum(-1), torch.ones(Hp, Wp, attn.num_heads))


def test_receptive_field_grows_by_the_window(tmp_path):
    from nat_mm.models import DiNAT, NAT
    from nat_mm.models.attention import attention_maps, receptive_fields

    image = (256, 256)
    nat = NAT(arch='mini').eval()
    dinat = DiNAT(arch='mini', task='seg').eval()
    fields = {}
    for name, backbone in (('nat', nat), ('dinat', dinat)):
        maps = attention_maps(backbone, torch.randn(1, 3, *image))
        fields[name] = receptive_fields(maps, image, (128, 128))
    nat_rows = [np.flatnonzero(f.any(1)) for f in fields['nat']]
    # after layer 1 of level 0: 7 tokens 4 px apart, each seeing 7 px through the stem's two
    # 3x3 stride-2 convs (4p-3 .. 4p+3): 6 * 4 + 7 px
    assert nat_rows[0].size == 6 * 4 + 7
    # each level-0 NAT layer adds 6 tokens (24 px)
    assert nat_rows[1].size - nat_rows[0].size == 24
    # monotone growth, and DiNAT's dilated second layer (d=16) sees far more than NAT's
    for fs in fields.values():
        sizes = [f.sum() for f in fs]
        assert sizes == sorted(sizes)
    assert fields['dinat'][1].sum() > 4 * fields['nat'][1].sum()


@pytest.mark.slow
def test_visualize_attention_tool(checkpoints, demo_data, tmp_path):
    import cv2

    image = _val_images(demo_data)[0]
    out = tmp_path / 'viz'
    proc = tool('tools/visualize_attention.py', SEG, image, '--checkpoint', checkpoints['seg'],
                '--points', '64,64', '3,120', '--out-dir', str(out))
    assert 'wrote' in proc.stdout
    for name in ('attention_64_64.png', 'receptive_field_64_64.png', 'attention_3_120.png',
                 'receptive_field_3_120.png'):
        png = cv2.imread(str(out / name))
        assert png is not None and png.shape[0] > 300 and png.shape[1] > 300, name
        assert png.std() > 10, f'{name} is blank'
    record = json.loads((out / 'attention.json').read_text())
    point = record['points'][1]
    assert point['point'] == [3, 120] and len(point['layers']) == 3 + 4 + 6 + 5
    first = point['layers'][0]
    # top-right corner token of level 0 (32x32 tokens): its window shifts inward to rows 0-6
    assert first['query'] == [0, 30] and first['rows'] == list(range(7))
    assert first['cols'] == list(range(25, 32))
    for layer in point['layers']:
        weights = np.asarray(layer['weights'])
        assert weights.shape[1] == 49
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    fractions = [layer['receptive_field_fraction'] for layer in point['layers']]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    proc = tool('tools/visualize_attention.py', SEG, image, '--points', '500,3', '--out-dir',
                str(out), check=False)
    assert proc.returncode != 0 and 'outside the 128x128 image' in proc.stderr


@pytest.mark.slow  # subprocesses: 6-8 s each here
@pytest.mark.parametrize('name', ['benchmark_op', 'benchmark_backbone'])
def test_benchmark_replot_writes_a_png(name, tmp_path):
    import cv2

    source = 'op_cpu.json' if name == 'benchmark_op' else 'backbone_cpu.json'
    data = json.loads(open(osp.join(ROOT, 'benchmarks', source)).read())
    path = tmp_path / source
    path.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, osp.join(TOOLS, f'{name}.py'), '--replot', str(path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    png = cv2.imread(str(tmp_path / source.replace('.json', '.png')))
    assert png is not None and png.shape[1] > 600 and png.std() > 10


@pytest.mark.slow
def test_benchmark_backbone_plot_after_a_run(tmp_path):
    import cv2

    out = tmp_path / 'bb.json'
    tool('tools/benchmark_backbone.py', '--shape', '64', '64', '--repeats', '1', '--warmup', '0',
         '--modes', 'infer', '--json', str(out), '--plot')
    data = json.loads(out.read_text())
    assert {r['model'] for r in data['results']} == {'NAT-Tiny', 'Swin-T (mmdet)'}
    assert cv2.imread(str(tmp_path / 'bb.png')) is not None

"""End-to-end tests of tools/: train, test, the gloo two-process run, resume, get_flops.

They run the tools as subprocesses, as a user would, on a tiny synthetic nuclei-like dataset
written in the demo layout by tools/prepare_demo_data.py's own writer (no download), with the
demo configs shrunk to a few iterations at 128 px.
"""
import glob
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import nat_mm  # noqa: F401  allow-lists mmengine checkpoint types for torch.load

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
DET = 'configs/det/demo_mask_rcnn_nat_mini.py'
SEG = 'configs/seg/demo_upernet_nat_mini.py'
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
           OMP_NUM_THREADS='1')


def tool(*args, timeout=600, env=ENV, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """A tiny dataset in the demo layout: 8 train and 2 val 128 px tiles of random discs."""
    sys.path.insert(0, TOOLS)
    try:
        from prepare_demo_data import tile_origins, write_split
    finally:
        sys.path.remove(TOOLS)
    import cv2
    rng = np.random.default_rng(0)
    size = 256
    labels = np.zeros((size, size), np.uint16)
    for i in range(40):
        y, x = rng.integers(8, size - 8, 2)
        cv2.circle(labels, (int(x), int(y)), int(rng.integers(4, 9)), i + 1, -1)
    img = cv2.cvtColor(np.where(labels > 0, 200, 30).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    root = tmp_path_factory.mktemp('demo')
    write_split('train', tile_origins(0, 128, size, 128, 64)[:4] * 2, img, labels, root, 128, 4)
    write_split('val', tile_origins(128, 256, size, 128, 128), img, labels, root, 128, 4)
    return str(root) + '/'


def data_options(config, root, iters=2):
    """--cfg-options that point a demo config at ``root``, 128 px and ``iters`` iterations."""
    opts = [f'{k}.dataset.data_root={root}'
            for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    opts += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
             'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
             f'param_scheduler.1.end={iters}', 'train_dataloader.batch_size=2']
    if config == DET:
        opts += [f'{k}.ann_file={root}annotations/instances_val.json'
                 for k in ('val_evaluator', 'test_evaluator')]
        opts += ['train_dataloader.dataset.pipeline.2.scale=(128,128)',
                 'val_dataloader.dataset.pipeline.1.scale=(128,128)',
                 'test_dataloader.dataset.pipeline.1.scale=(128,128)',
                 f'param_scheduler.1.T_max={iters}']
    else:
        opts += ['model.data_preprocessor.size=(128,128)', 'param_scheduler.0.end=1',
                 'param_scheduler.1.begin=1',
                 'train_dataloader.dataset.pipeline.2.scale=(128,128)',
                 'val_dataloader.dataset.pipeline.1.scale=(128,128)',
                 'test_dataloader.dataset.pipeline.1.scale=(128,128)']
    return ['--cfg-options', *opts]


@pytest.mark.parametrize('config', [DET, SEG], ids=['det', 'seg'])
def test_train_then_test(config, data_root, tmp_path):
    work = tmp_path / 'work'
    tool('tools/train.py', config, '--work-dir', str(work), *data_options(config, data_root))
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')

    vis = tmp_path / 'vis'
    out = tmp_path / ('preds.pkl' if config == DET else 'preds')
    proc = tool('tools/test.py', config, str(ckpt), '--work-dir', str(tmp_path / 'test'),
                '--show-dir', str(vis), '--out', str(out), *data_options(config, data_root))
    log = proc.stdout + proc.stderr
    if config == DET:
        assert re.search(r'coco/bbox_mAP: [\d.-]+', log) and 'coco/segm_mAP' in log
        assert out.is_file()
        pngs = glob.glob(str(vis / '*.png'))
    else:
        assert re.search(r'mIoU: [\d.]+', log)
        assert glob.glob(str(out / '*.png'))
        pngs = glob.glob(str(vis / 'vis_data' / 'vis_image' / '*.png'))
    assert len(pngs) == 2, pngs


def test_missing_dataset_and_checkpoint_errors(tmp_path):
    proc = tool('tools/train.py', 'configs/det/mask_rcnn_nat_tiny_3x.py', '--work-dir',
                str(tmp_path), '--cfg-options',
                f'train_dataloader.dataset.data_root={tmp_path}/nowhere/', check=False)
    assert proc.returncode != 0
    assert f'dataset path not found: {tmp_path}/nowhere/' in proc.stderr
    assert 'cocodataset.org' in proc.stderr

    proc = tool('tools/test.py', SEG, str(tmp_path / 'missing.pth'), check=False)
    assert proc.returncode != 0
    assert f'checkpoint not found: {tmp_path}/missing.pth' in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU (gloo) path')
def test_gloo_two_processes(data_root, tmp_path):
    work = tmp_path / 'work'
    cmd = ['-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533',
           'tools/train.py', SEG, '--launcher', 'pytorch', '--work-dir', str(work),
           *data_options(SEG, data_root)]
    proc = tool(*cmd)
    log = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in log
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine logs the world size under this name
    ckpt = torch.load(work / 'iter_2.pth', map_location='cpu')
    assert ckpt['meta']['iter'] == 2
    # both processes took part: the sampler split the 8 tiles, DDP kept the weights equal
    assert re.search(r'Iter\(train\) \[2/2\]', log)


def _adamw_step(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location='cpu')
    steps = {float(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert len(steps) == 1
    return ckpt['meta']['iter'], steps.pop()


def test_resume_after_sigkill(data_root, tmp_path):
    work = tmp_path / 'work'
    args = [sys.executable, 'tools/train.py', DET, '--work-dir', str(work),
            *data_options(DET, data_root, iters=6)]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (work / 'iter_2.pth').is_file() or not (work / 'last_checkpoint').is_file():
        assert proc.poll() is None, 'training ended before its first checkpoint'
        assert time.time() < deadline, 'no checkpoint within 300 s'
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint file be complete
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / 'iter_6.pth').exists(), 'killed too late to test resuming'
    killed_at, killed_step = _adamw_step(work / 'iter_2.pth')
    assert (killed_at, killed_step) == (2, 2.0)

    proc = tool(*args[1:], '--resume')
    log = proc.stdout + proc.stderr
    assert 'Auto resumed from the latest checkpoint' in log
    resumed = re.search(r'resumed epoch: \d+, iter: (\d+)', log)
    assert resumed and int(resumed.group(1)) in (2, 4), log[-3000:]
    assert not re.search(r'Iter\(train\) \[\s*1/6\]', log), 'training restarted from scratch'
    # the optimizer state went on from the checkpoint: 6 AdamW steps in all, not 4
    assert _adamw_step(work / 'iter_6.pth') == (6, 6.0)


def _flops_line(proc):
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r'FLOPs: ([\d.]+)G  Params: ([\d.]+)M', last)
    assert match, last
    return float(match.group(1)), float(match.group(2))


@pytest.mark.parametrize('config,params', [('configs/det/mask_rcnn_nat_mini_3x.py', 40),
                                           ('configs/seg/upernet_nat_mini_160k.py', 50)],
                         ids=['det', 'seg'])
def test_get_flops(config, params):
    flops, got_params = _flops_line(tool('tools/get_flops.py', config, '--shape', '128', '160'))
    assert round(got_params) == params
    assert flops > 0


def test_na_flop_handle_counts_the_papers_formula():
    from mmengine.analysis import FlopAnalyzer

    from nat_mm import NAT
    from nat_mm.mm.flops import add_na_flop_handles
    model = NAT(arch='mini').eval()
    with torch.no_grad():
        analyzer = add_na_flop_handles(FlopAnalyzer(model, (torch.zeros(1, 3, 224, 224), )))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = analyzer.by_operator()
    # 2 * H * W * heads * 49 * 32 per layer (head dim 32), levels at 56, 28, 14, 7
    expected = sum(2 * s * s * heads * 49 * 32 * depth for s, heads, depth in zip(
        (56, 28, 14, 7), (2, 4, 8, 16), (3, 4, 6, 5)))
    # compiled op (fused, or qk + av), or the pure-PyTorch path's two einsums
    na = sum(by_op.get(k, 0) for k in ('na2d_forward', 'na2d_qk_forward', 'na2d_av_forward',
                                       'einsum'))
    assert na == expected, by_op

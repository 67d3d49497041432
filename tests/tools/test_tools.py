"""End-to-end tests of tools/: train, test, the gloo two-process run, resume, get_flops, the
Slurm scripts.

They run the tools as subprocesses, as a user would, on a tiny synthetic nuclei-like dataset
written in the demo layout by tools/prepare_demo_data.py's own writer (no download; see
nat_mm.testing.tools), with the demo configs shrunk to a few iterations at 128 px.
"""
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import nat_mm  # noqa: F401  allow-lists mmengine checkpoint types for torch.load
from nat_mm.testing.tools import DET, ENV, ROOT, SEG, TOOLS, data_options, free_port, tool, tool_cli


@pytest.fixture(scope='module')
def data_root(demo_data):
    return demo_data


@pytest.mark.slow
@pytest.mark.parametrize('config', [DET, SEG], ids=['det', 'seg'])
def test_train_then_test(config, data_root, tmp_path):
    """Train (evaluating at the end) and test; for detection on COCO files without ``info``,
    which pycocotools 2.0.10 (KeyError 'info' in loadRes) could not evaluate."""
    with open(f'{data_root}annotations/instances_val.json') as f:
        assert 'info' not in json.load(f)
    work = tmp_path / 'work'
    tool('tools/train.py', config, '--work-dir', str(work), *data_options(config, data_root))
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')

    vis = tmp_path / 'vis'
    out = tmp_path / ('preds.pkl' if config == DET else 'preds')
    # segmentation is tested with --tta (the plain test runs in test_run_demo_end_to_end)
    tta = ['--tta'] if config == SEG else []
    proc = tool('tools/test.py', config, str(ckpt), '--work-dir', str(tmp_path / 'test'),
                '--show-dir', str(vis), '--out', str(out), *tta, *data_options(config, data_root))
    log = proc.stdout + proc.stderr
    if config == DET:
        assert re.search(r'coco/bbox_mAP: [\d.-]+', log) and 'coco/segm_mAP' in log
        assert out.is_file()
        pngs = glob.glob(str(vis / '*.png'))
    else:
        assert "type='SegTTAModel'" in log and "type='TestTimeAug'" in log  # the config run
        assert re.search(r'mIoU: [\d.]+', log)
        assert glob.glob(str(out / '*.png'))
        pngs = glob.glob(str(vis / 'vis_data' / 'vis_image' / '*.png'))
    assert len(pngs) == 2, pngs


def test_missing_dataset_and_checkpoint_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as error:
        _run_tool('train', ['configs/det/mask_rcnn_nat_tiny_3x.py', '--work-dir', str(tmp_path),
                            '--cfg-options',
                            f'train_dataloader.dataset.data_root={tmp_path}/nowhere/'],
                  monkeypatch)
    assert f'dataset path not found: {tmp_path}/nowhere/' in str(error.value)
    assert 'cocodataset.org' in str(error.value)

    with pytest.raises(FileNotFoundError, match=f'checkpoint not found: {tmp_path}/missing.pth'):
        _run_tool('test', [SEG, str(tmp_path / 'missing.pth')], monkeypatch)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU (gloo) path')
def test_gloo_two_processes(data_root, tmp_path):
    """Two gloo processes: each trains on its own half of the samples, and DDP keeps their
    weights equal (every rank writes what it saw and its weights:
    nat_mm.testing.rank_record_hook)."""
    work = tmp_path / 'work'
    config = tmp_path / 'gloo.py'
    config.write_text(f"_base_ = [{os.path.join(ROOT, SEG)!r}]\n"
                      "custom_imports = dict("
                      "imports=['nat_mm', 'nat_mm.testing.rank_record_hook'], "
                      "allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='RankRecordHook')]\n")
    cmd = ['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           'tools/train.py', str(config), '--launcher', 'pytorch', '--work-dir', str(work),
           *data_options(SEG, data_root)]
    proc = tool(*cmd)
    log = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in log
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine logs the world size under this name
    ckpt = torch.load(work / 'iter_2.pth', map_location='cpu')
    assert ckpt['meta']['iter'] == 2
    ranks = [torch.load(work / f'rank{r}.pth', map_location='cpu') for r in (0, 1)]
    # each rank trained on 2 iterations x 2 images, and not on the other's images
    seen = [r['img_paths'] for r in ranks]
    assert [len(s) for s in seen] == [4, 4], seen
    assert [len(set(s)) for s in seen] == [4, 4] and not set(seen[0]) & set(seen[1]), seen
    # ... and both ended with the same weights, the ones rank 0 saved
    params = [r['params'] for r in ranks]
    assert params[0].keys() == params[1].keys() and len(params[0]) > 100
    saved = ckpt['state_dict']
    for name, value in params[0].items():
        assert torch.equal(value, params[1][name]), name
        assert torch.equal(value, saved[name]), name


def _adamw_step(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location='cpu')
    steps = {float(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert len(steps) == 1
    return ckpt['meta']['iter'], steps.pop()


@pytest.mark.slow
def test_resume_after_sigkill(data_root, tmp_path):
    work = tmp_path / 'work'
    args = [sys.executable, 'tools/train.py', DET, '--work-dir', str(work),
            *data_options(DET, data_root, iters=6)]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # mmengine writes last_checkpoint (the path) after the checkpoint file is complete.
    last = work / 'last_checkpoint'
    deadline = time.time() + 600
    while not (last.is_file() and last.read_text().strip().endswith('iter_2.pth')):
        assert proc.poll() is None, 'training ended before its first checkpoint'
        assert time.time() < deadline, 'no checkpoint within 600 s'
        time.sleep(0.1)
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


@pytest.fixture(scope='module')
def det_checkpoint(data_root, tmp_path_factory):
    """A Mask R-CNN demo checkpoint after 2 iterations (tools/train.py)."""
    work = tmp_path_factory.mktemp('det_ckpt')
    tool('tools/train.py', DET, '--work-dir', str(work), *data_options(DET, data_root))
    return work / 'iter_2.pth'


@pytest.mark.slow
def test_resume_from_a_given_checkpoint(det_checkpoint, data_root, tmp_path):
    """``--resume PATH`` into a fresh work dir continues at iteration 2 of that checkpoint, with
    its optimizer state (AdamW's step count goes on to 4, not 2)."""
    work = tmp_path / 'work'
    proc = tool('tools/train.py', DET, '--work-dir', str(work), '--resume', str(det_checkpoint),
                *data_options(DET, data_root, iters=4))
    log = proc.stdout + proc.stderr
    assert f'Load checkpoint from {det_checkpoint}' in log
    assert re.search(r'resumed epoch: \d+, iter: 2\b', log), log[-3000:]
    assert not re.search(r'Iter\(train\) \[\s*[12]/4\]', log), 'iterations 1-2 ran again'
    assert not (work / 'iter_2.pth').exists()
    assert _adamw_step(work / 'iter_4.pth') == (4, 4.0)


@pytest.mark.slow
def test_load_from_and_auto_scale_lr(det_checkpoint, data_root, tmp_path):
    """``load_from`` starts a new run (iteration 0, fresh optimizer) from the checkpoint's
    weights; ``--auto-scale-lr`` scales the lr by batch / auto_scale_lr.base_batch_size."""
    work = tmp_path / 'work'
    options = data_options(DET, data_root, iters=1)
    options += ['auto_scale_lr.base_batch_size=16', 'auto_scale_lr.enable=False',
                f'load_from={det_checkpoint}']
    proc = tool('tools/train.py', DET, '--work-dir', str(work), '--auto-scale-lr', *options)
    log = proc.stdout + proc.stderr
    assert f'Load checkpoint from {det_checkpoint}' in log
    assert 'Scaling the original LR by 0.125' in log  # batch 2 of 16
    ckpt = torch.load(work / 'iter_1.pth', map_location='cpu')
    assert {g['initial_lr'] for g in ckpt['optimizer']['param_groups']} == {0.0005 * 0.125}
    assert _adamw_step(work / 'iter_1.pth') == (1, 1.0)  # a new optimizer, not a resume
    # one AdamW step at the warmup's first lr (6.25e-7) moves each weight by about that much;
    # weights not loaded would differ by the init's scale
    loaded = torch.load(det_checkpoint, map_location='cpu')['state_dict']
    assert loaded.keys() == ckpt['state_dict'].keys()
    for name, value in ckpt['state_dict'].items():
        torch.testing.assert_close(value, loaded[name], atol=1e-5, rtol=0, msg=name)


def _flops_line(text):
    last = text.strip().splitlines()[-1]
    match = re.fullmatch(r'FLOPs: ([\d.]+)G  Params: ([\d.]+)M', last)
    assert match, last
    return float(match.group(1)), float(match.group(2))


def na_flops(shape, depths, heads, kernel_size=7, head_dim=32):
    """The papers' NA count, 2 * H * W * heads * k*k * D per layer, at strides 4, 8, 16, 32."""
    h, w = math.ceil(shape[0] / 4), math.ceil(shape[1] / 4)
    total = 0
    for depth, n in zip(depths, heads):
        total += 2 * h * w * n * kernel_size**2 * head_dim * depth
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return total


@pytest.mark.slow
@pytest.mark.parametrize('config,params', [('configs/det/mask_rcnn_nat_mini_3x.py', 40),
                                           ('configs/seg/upernet_nat_mini_160k.py', 50)],
                         ids=['det', 'seg'])
def test_get_flops_cli(config, params):
    flops, got_params = _flops_line(tool('tools/get_flops.py', config, '--shape', '128',
                                         '160').stdout)
    assert round(got_params) == params
    # at 128x160 NA is a small part of the whole; it must be in the count, and more than it
    assert flops * 1e9 > na_flops((128, 160), (3, 4, 6, 5), (2, 4, 8, 16))


NAT_TINY = (3, 4, 18, 5), (2, 4, 8, 16)
DINAT_S_TINY = (2, 2, 6, 2), (3, 6, 12, 24)  # Swin-T's layout


@pytest.mark.slow
@pytest.mark.parametrize('config,shape,paper,layout', [
    ('configs/det/mask_rcnn_nat_tiny_3x.py', (1280, 800), 258, NAT_TINY),
    ('configs/seg/upernet_nat_tiny_160k.py', (512, 2048), 934, NAT_TINY),
    ('configs/det/mask_rcnn_dinat_s_tiny_3x.py', (1280, 800), 263, DINAT_S_TINY),
], ids=['mask_rcnn-1280x800', 'upernet-512x2048', 'mask_rcnn_dinat_s-1280x800'])
def test_get_flops_reproduces_the_papers(config, shape, paper, layout, monkeypatch, capsys):
    """NAT-Tiny: Mask R-CNN 258G at 1280x800, UPerNet 934G at 512x2048; DiNAT_s-Tiny: Mask
    R-CNN 263G (the papers' tables), with the NA handles counting every NA layer of the
    backbone, run in eval mode."""
    from mmengine.analysis import FlopAnalyzer

    from nat_mm.mm import flops
    analyzers = []

    class SpyAnalyzer(FlopAnalyzer):

        def __init__(self, model, inputs):
            super().__init__(model, inputs)
            analyzers.append(self)

    monkeypatch.setattr(flops, 'FlopAnalyzer', SpyAnalyzer)  # what tools/get_flops.py counts with
    monkeypatch.setattr(sys, 'argv', ['get_flops.py', config])  # the default shape
    tool_cli('get_flops').main()
    out = capsys.readouterr().out
    assert f'input shape: 1x3x{shape[0]}x{shape[1]}' in out
    flops, _ = _flops_line(out)
    assert abs(flops - paper) / paper < 0.02, (flops, paper)
    # and configs/metafile.yml's FLOPs (make_zoo --measure-flops) are what the code counts now
    from nat_mm.mm.zoo import load_metafile
    recorded = load_metafile()[config[len('configs/'):]]
    assert recorded.flops_shape == shape and abs(flops * 1e9 - recorded.flops) <= 0.05e9, \
        (flops, recorded.flops)
    (analyzer, ) = analyzers
    assert not analyzer._model.model.training
    by_op = analyzer.by_operator()
    # the fused op ran in every layer (eval: no attention dropout path) and was counted
    assert by_op['na2d_forward'] == na_flops(shape, *layout), by_op
    assert 'na2d_qk_forward' not in by_op and 'einsum' not in by_op, by_op


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


# --- Slurm scripts --------------------------------------------------------------------------

@pytest.fixture
def fake_srun(tmp_path):
    """An ``srun`` on PATH that records its arguments and environment as JSON and exits 0."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    record = tmp_path / 'srun.json'
    srun = bin_dir / 'srun'
    srun.write_text('#!' + sys.executable + '\n'
                    'import json, os, sys\n'
                    f'json.dump(dict(argv=sys.argv[1:], pythonpath=os.environ["PYTHONPATH"]), '
                    f'open({str(record)!r}, "w"))\n')
    srun.chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    for var in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PYTHON', 'PYTHONPATH'):
        env.pop(var, None)

    def run(script, *args, **extra_env):
        proc = subprocess.run(['bash', os.path.join(TOOLS, script), *args], cwd=tmp_path,
                              env=dict(env, **extra_env), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(record.read_text())

    return run


def _parse_tool_args(tool_name, argv, monkeypatch):
    """Parse ``argv`` with tools/<tool_name>'s own parse_args (the command srun would run)."""
    module = tool_cli(tool_name)
    monkeypatch.setattr(sys, 'argv', [tool_name + '.py', *argv])
    return module.parse_args()


def test_slurm_train_command_line(fake_srun, monkeypatch):
    got = fake_srun('slurm_train.sh', 'gpu', 'nat-job', 'configs/my config.py', 'work dir',
                    '--cfg-options', 'train_cfg.max_iters=10', GPUS='16', GPUS_PER_NODE='4',
                    CPUS_PER_TASK='6', SRUN_ARGS='--mem=0 --time=2:00:00')
    assert got['argv'] == [
        '-p', 'gpu', '--job-name=nat-job', '--gres=gpu:4', '--ntasks=16', '--ntasks-per-node=4',
        '--cpus-per-task=6', '--kill-on-bad-exit=1', '--mem=0', '--time=2:00:00',
        'python', '-u', os.path.join(TOOLS, 'train.py'), 'configs/my config.py',
        '--work-dir=work dir', '--launcher=slurm', '--cfg-options', 'train_cfg.max_iters=10']
    assert os.path.realpath(got['pythonpath']) == ROOT  # nat_mm importable from the checkout
    args = _parse_tool_args('train', got['argv'][13:], monkeypatch)
    assert (args.config, args.work_dir, args.launcher) == ('configs/my config.py', 'work dir',
                                                           'slurm')
    assert args.cfg_options == {'train_cfg.max_iters': 10}


def test_slurm_test_command_line(fake_srun, monkeypatch):
    got = fake_srun('slurm_test.sh', 'gpu', 'nat-eval', 'cfg.py', 'ckpt.pth', '--tta',
                    PYTHON='/opt/py/bin/python')
    assert got['argv'] == [
        '-p', 'gpu', '--job-name=nat-eval', '--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8',
        '--cpus-per-task=5', '--kill-on-bad-exit=1', '/opt/py/bin/python', '-u',
        os.path.join(TOOLS, 'test.py'), 'cfg.py', 'ckpt.pth', '--launcher=slurm', '--tta']
    args = _parse_tool_args('test', got['argv'][11:], monkeypatch)
    assert (args.config, args.checkpoint, args.launcher, args.tta) == ('cfg.py', 'ckpt.pth',
                                                                       'slurm', True)


def test_slurm_scripts_need_four_arguments(tmp_path):
    for script in ('slurm_train.sh', 'slurm_test.sh'):
        proc = subprocess.run(['bash', os.path.join(TOOLS, script), 'gpu', 'job', 'cfg.py'],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and 'usage:' in proc.stderr


# --- tools/train.py and tools/test.py: argument errors, in-process ---------------------------

def _run_tool(name, argv, monkeypatch):
    """Run tools/<name>.py's main in this process (what `python tools/<name>.py ...` does, but
    with the exceptions raised: nat_mm.mm.cli.run would print a user-input error as one line,
    which tests/tools/test_bad_inputs.py checks)."""
    monkeypatch.setattr(sys, 'argv', [f'tools/{name}.py', *argv])
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv('LOCAL_RANK', os.environ.get('LOCAL_RANK', '0'))  # restored afterwards
    tool_cli(name).main()


def test_test_out_must_be_a_pickle_for_detection(data_root, tmp_path, monkeypatch):
    ckpt = tmp_path / 'ckpt.pth'
    ckpt.write_bytes(b'')
    with pytest.raises(ValueError, match=r'--out must be a \.pkl or \.pickle file, got .*\.json'):
        _run_tool('test', [DET, str(ckpt), '--out', str(tmp_path / 'preds.json'),
                           '--work-dir', str(tmp_path), *data_options(DET, data_root)],
                  monkeypatch)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only launcher check')
@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_train_unsupported_launcher_without_cuda(launcher, data_root, tmp_path, monkeypatch):
    with pytest.raises(NotImplementedError, match=f'supported with --launcher pytorch.*got '
                       f'--launcher {launcher}'):
        _run_tool('train', [DET, '--launcher', launcher, '--work-dir', str(tmp_path),
                            *data_options(DET, data_root)], monkeypatch)


def test_train_rejects_an_unknown_launcher(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _run_tool('train', [DET, '--launcher', 'torchrun'], monkeypatch)
    assert "invalid choice: 'torchrun'" in capsys.readouterr().err


@pytest.mark.parametrize('option,key', [
    ('model.backbone.pretrained', 'model.backbone.pretrained'),
    ('model.backbone.init_cfg.checkpoint', 'model.backbone.init_cfg'),
])
def test_train_missing_pretrained_checkpoint(option, key, data_root, tmp_path, monkeypatch):
    config = DET if key != 'model.backbone.init_cfg' else 'configs/det/mask_rcnn_nat_mini_3x.py'
    options = data_options(DET, data_root)
    if config != DET:  # the COCO config: point its datasets at the demo data
        options = ['--cfg-options'] + [
            f'{loader}.dataset.{k}={v}' for loader, split in (
                ('train_dataloader', 'train'), ('val_dataloader', 'val'),
                ('test_dataloader', 'val'))
            for k, v in (('data_root', data_root),
                         ('ann_file', f'annotations/instances_{split}.json'),
                         ('data_prefix.img', f'images/{split}/'))
        ] + [f'val_evaluator.ann_file={data_root}annotations/instances_val.json']
    missing = tmp_path / 'nowhere' / 'nat_mini.pth'
    with pytest.raises(FileNotFoundError, match=f'pretrained backbone checkpoint not found: '
                       f'{missing} \\({key}\\)'):
        _run_tool('train', [config, '--work-dir', str(tmp_path), *options,
                            f'{option}={missing}'], monkeypatch)


def test_train_resume_and_auto_scale_lr_errors(data_root, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f'--resume checkpoint not found: {tmp_path}'):
        _run_tool('train', [DET, '--resume', str(tmp_path / 'iter_9.pth'), '--work-dir',
                            str(tmp_path), *data_options(DET, data_root)], monkeypatch)
    with pytest.raises(FileNotFoundError, match=f'load_from checkpoint not found: {tmp_path}'):
        _run_tool('train', [DET, '--work-dir', str(tmp_path), *data_options(DET, data_root),
                            f'load_from={tmp_path / "iter_9.pth"}'], monkeypatch)
    with pytest.raises(RuntimeError, match='--auto-scale-lr needs `auto_scale_lr'):
        _run_tool('train', [DET, '--auto-scale-lr', '--work-dir', str(tmp_path),
                            *data_options(DET, data_root)], monkeypatch)


# --- tools/prepare_demo_data.py on a small synthetic crop (no download) ----------------------

def _write_raw_nuclei(out, height, width, count, seed=1):
    """A synthetic 16-bit nuclei image and its label map in ``out/raw`` (what fetch_raw would
    extract from the stardist wheel, which the tests do not download); returns the labels."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint16)
    for i in range(count):
        y, x = rng.integers(6, [height - 6, width - 6])
        cv2.circle(labels, (int(x), int(y)), int(rng.integers(3, 8)), i + 1, -1)
    img = (labels > 0) * 3000 + rng.integers(0, 200, labels.shape)
    (out / 'raw').mkdir(parents=True)
    cv2.imwrite(str(out / 'raw' / 'img2d.tif'), img.astype(np.uint16))
    cv2.imwrite(str(out / 'raw' / 'mask2d.tif'), labels)
    return labels


def test_prepare_demo_data_small_crop(tmp_path, monkeypatch, capsys):
    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils
    out = tmp_path / 'demo'
    labels = _write_raw_nuclei(out, 192, 256, 30)
    args = ['--out-dir', str(out), '--tile', '64', '--stride', '64', '--split-x', '128']
    monkeypatch.setattr(sys, 'argv', ['prepare_demo_data.py', *args])
    import runpy
    runpy.run_path(os.path.join(TOOLS, 'prepare_demo_data.py'), run_name='__main__')
    summary = (out / '.complete').read_text()
    for split, x0 in (('train', 0), ('val', 128)):
        coco = json.loads((out / 'annotations' / f'instances_{split}.json').read_text())
        assert len(coco['images']) == 6  # 2 columns x 3 rows of 64 px tiles
        assert f'{split}: 6 tiles, {len(coco["annotations"])} instances' in summary
        for image in coco['images']:
            y, x = map(int, image['file_name'][:-4].split('_')[1:])
            assert x0 <= x < x0 + 128
            crop = labels[y:y + 64, x:x + 64]
            tile = cv2.imread(str(out / 'images' / split / image['file_name']))
            seg = cv2.imread(str(out / 'seg_maps' / split / image['file_name']),
                             cv2.IMREAD_UNCHANGED)
            assert tile.shape == (64, 64, 3) and np.array_equal(seg, (crop > 0).astype(np.uint8))
            anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
            expected = [v for v in np.unique(crop) if v and (crop == v).sum() >= 8]
            assert len(anns) == len(expected)
            masks = [mask_utils.decode(dict(a['segmentation'], counts=a['segmentation'][
                'counts'].encode())) for a in anns]
            assert sorted(int(m.sum()) for m in masks) == sorted(
                int((crop == v).sum()) for v in expected)
    capsys.readouterr()
    runpy.run_path(os.path.join(TOOLS, 'prepare_demo_data.py'), run_name='__main__')
    assert 'is ready' in capsys.readouterr().out  # idempotent


@pytest.mark.slow
def test_run_demo_end_to_end(tmp_path):
    """``make demo``'s tools/run_demo.py on a small synthetic crop: data written, both models
    trained and tested, the metrics printed and the drawings written."""
    data, work = tmp_path / 'demo', tmp_path / 'work'
    _write_raw_nuclei(data, 128, 512, 40)  # 5 train tiles left of x=384, 1 val tile right
    proc = tool('tools/run_demo.py', '--data-root', str(data), '--work-dir', str(work),
                '--det-iters', '2', '--seg-iters', '2')
    out = proc.stdout
    assert 'train: 5 tiles' in (data / '.complete').read_text()
    for split in ('train', 'val'):
        assert (data / 'annotations' / f'instances_{split}.json').is_file()
    det = re.search(r'Mask R-CNN NAT-Mini: bbox mAP (\S+) .*segm mAP (\S+)', out)
    seg = re.search(r'UPerNet NAT-Mini: mIoU (\S+)', out)
    assert det and seg, out[-3000:]
    for value in (*det.groups(), seg.group(1)):
        assert not math.isnan(float(value)), out[-3000:]  # a metric the tool did not find
    assert len(glob.glob(str(work / 'det' / 'vis' / '*.png'))) == 1
    assert len(glob.glob(str(work / 'seg' / 'vis' / 'vis_data' / 'vis_image' / '*.png'))) == 1
    for task in ('det', 'seg'):
        assert (work / task / 'iter_2.pth').is_file()

"""The embedded demo (``make demo``): train and test NAT-Mini on real nuclei, on the CPU.

Steps, each one of our tools run as a subprocess so its mmengine progress log shows:

1. ``tools/prepare_demo_data.py``: tiles of the stardist nuclei image -> data/demo/
   (COCO instances + mmseg label maps, separate train and val tiles).
2. ``tools/train.py configs/det/demo_mask_rcnn_nat_mini.py`` (Mask R-CNN NAT-Mini from scratch).
3. ``tools/test.py`` on the val tiles with ``--show-dir``: COCO bbox/segm mAP and PNG drawings.
4. + 5. the same for ``configs/seg/demo_upernet_nat_mini.py`` (UPerNet NAT-Mini, mIoU).

Finally it prints the metrics and where the drawings are. Everything goes under
``--work-dir`` (default work_dirs/demo), the data under ``--data-root`` (default data/demo/).

Example:
    python tools/run_demo.py
    python tools/run_demo.py --det-iters 100 --seg-iters 100   # quicker, lower numbers
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from nat_mm.mm.cli import UserInputError, positive_int, run as run_main  # noqa: E402

DET_CONFIG = 'configs/det/demo_mask_rcnn_nat_mini.py'
SEG_CONFIG = 'configs/seg/demo_upernet_nat_mini.py'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo', help='where outputs go')
    parser.add_argument('--data-root', default='data/demo/',
                        help='where tools/prepare_demo_data.py writes the tiles (and finds raw/)')
    parser.add_argument('--det-iters', type=positive_int,
                        help='override the det config\'s max_iters')
    parser.add_argument('--seg-iters', type=positive_int,
                        help='override the seg config\'s max_iters')
    parser.add_argument('--skip-det', action='store_true', help='run segmentation only')
    parser.add_argument('--skip-seg', action='store_true', help='run detection only')
    return parser.parse_args()


def run(cmd, title):
    """Run one step; a failed step ends the demo with one line (the step printed why)."""
    print(f'\n==== {title}\n$ {" ".join(cmd)}', flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    returncode = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if returncode:
        raise UserInputError(f'step "{title}" failed (exit status {returncode}); its output '
                             'above says why')


def iter_options(config, iters):
    """--cfg-options for ``iters`` training iterations: the main schedule ends there, and a
    warmup longer than a fifth of the run shrinks to that (at least one iteration)."""
    if iters is None:
        return []
    from mmengine.config import Config
    warmup, main = Config.fromfile(osp.join(ROOT, config)).param_scheduler
    options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
               f'param_scheduler.1.end={iters}']
    if 'T_max' in main:  # cosine (det); PolyLR (seg) has none
        options.append(f'param_scheduler.1.T_max={iters}')
    warmup_end = min(warmup['end'], max(1, iters // 5))
    options.append(f'param_scheduler.0.end={warmup_end}')
    if main.get('begin', 0):  # the main schedule starts where the warmup ends (seg)
        options.append(f'param_scheduler.1.begin={warmup_end}')
    return options


def data_options(task, data_root):
    """Point a demo config's datasets (and the COCO evaluator) at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    options = [f'{loader}.dataset.data_root={root}'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if task == 'det':
        options += [f'{evaluator}.ann_file={root}annotations/instances_val.json'
                    for evaluator in ('val_evaluator', 'test_evaluator')]
    return options


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def test_metrics(work_dir):
    """The metrics of the latest test run in ``work_dir`` (mmengine's <timestamp>.json)."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', '*.json')) +
                  glob.glob(osp.join(work_dir, '*', '*.json')), key=osp.getmtime)
    for path in reversed(logs):
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        if lines:
            return lines[-1]
    return {}


def train_and_test(task, config, iters, work_dir, data_root):
    train_dir = osp.join(work_dir, task)
    vis_dir = osp.join(work_dir, task, 'vis')
    options = iter_options(config, iters)
    data = data_options(task, data_root)
    run([sys.executable, 'tools/train.py', config, '--work-dir', train_dir, '--cfg-options']
        + data + options, f'{task}: train {config}')
    test_dir = osp.join(work_dir, task, 'test')
    run([sys.executable, 'tools/test.py', config, last_checkpoint(train_dir), '--work-dir',
         test_dir, '--show-dir', vis_dir, '--cfg-options'] + data,
        f'{task}: test on the val tiles')
    return test_metrics(test_dir), vis_dir


def main():
    args = parse_args()
    start = time.time()
    run([sys.executable, 'tools/prepare_demo_data.py', '--out-dir', args.data_root],
        f'prepare {args.data_root}')
    results = {}
    if not args.skip_det:
        results['det'] = train_and_test('det', DET_CONFIG, args.det_iters, args.work_dir,
                                        args.data_root)
    if not args.skip_seg:
        results['seg'] = train_and_test('seg', SEG_CONFIG, args.seg_iters, args.work_dir,
                                        args.data_root)

    print('\n==== demo results (val tiles, models trained from scratch on the CPU)')
    if 'det' in results:
        metrics, vis = results['det']
        print(f'Mask R-CNN NAT-Mini: bbox mAP {metrics.get("coco/bbox_mAP", float("nan")):.3f}'
              f'  (AP50 {metrics.get("coco/bbox_mAP_50", float("nan")):.3f}),  '
              f'segm mAP {metrics.get("coco/segm_mAP", float("nan")):.3f}'
              f'  (AP50 {metrics.get("coco/segm_mAP_50", float("nan")):.3f})')
        print(f'  drawings: {vis}/')
    if 'seg' in results:
        metrics, vis = results['seg']
        print(f'UPerNet NAT-Mini: mIoU {metrics.get("mIoU", float("nan")):.2f}'
              f'  (aAcc {metrics.get("aAcc", float("nan")):.2f})')
        print(f'  drawings: {vis}/vis_data/vis_image/')
    print(f'total time: {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
    run_main(main)

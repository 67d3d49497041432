"""Running tools/ (ours, mmdet's and mmseg's) from tests: subprocesses, in-process command lines
and a tiny dataset.

The data is a tiny synthetic nuclei-like set in the demo layout, written by
tools/prepare_demo_data.py's own writer (nat_mm.mm.data, no download): 8 distinct train and 2 val
128 px tiles of random discs; the demo configs are shrunk to a few iterations at 128 px by
:func:`data_options`. Tools run as subprocesses, or in this process through :func:`tool_cli`.
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

# The checkout (nat_mm is installed editable; tools/ and configs/ are not in a wheel).
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools')
DET = 'configs/det/demo_mask_rcnn_nat_mini.py'
SEG = 'configs/seg/demo_upernet_nat_mini.py'
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
           OMP_NUM_THREADS='1')


def mm_tool(package: str, name: str) -> str:
    """Path of mmdet's or mmseg's own ``tools/<name>`` as installed (``<package>/.mim/tools``)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    path = osp.join(osp.dirname(spec.origin), '.mim', 'tools', name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{package} ships no {path}')
    return path


def tool(*args, timeout=900, env=ENV, check=True, cwd=ROOT):
    """Run ``python *args`` (a tool) and return the CompletedProcess; raise with its log on
    failure when ``check``."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


def tool_cli(name: str):
    """The command line of ``tools/<name>.py`` (e.g. ``'train'``, ``'gpu/summarize'``) in this
    process: the script as a fresh module (its ``parse_args`` and ``main``; not in
    ``sys.modules``, tools/ not on ``sys.path``), so that a test can run the command line or
    patch what it calls: what ``python tools/<name>.py`` runs, minus the interpreter start. The
    library behind the tools is imported from nat_mm, never through this."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'nat_mm_tool_{name.replace("/", "_")}',
                                                  osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_demo_data(root: Path, with_info: bool = True) -> str:
    """Write the tiny dataset under ``root``; without ``with_info`` the COCO files have no
    ``info`` key (as most converted custom datasets). Returns ``root`` with a trailing slash."""
    import cv2

    from nat_mm.mm.data import tile_origins, write_split
    rng = np.random.default_rng(0)
    size = 256
    labels = np.zeros((size, size), np.uint16)
    for i in range(40):
        y, x = rng.integers(8, size - 8, 2)
        cv2.circle(labels, (int(x), int(y)), int(rng.integers(4, 9)), i + 1, -1)
    img = cv2.cvtColor(np.where(labels > 0, 200, 30).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    train = tile_origins(0, 160, size, 128, 32)[:8]  # 8 distinct tiles
    assert len(set(train)) == 8
    write_split('train', train, img, labels, root, 128, 4)
    write_split('val', tile_origins(128, 256, size, 128, 128), img, labels, root, 128, 4)
    if not with_info:
        for split in ('train', 'val'):
            path = root / 'annotations' / f'instances_{split}.json'
            coco = json.loads(path.read_text())
            del coco['info']
            path.write_text(json.dumps(coco))
    return str(root) + '/'


def data_options(config, root, iters=2, batch_size=2):
    """--cfg-options that point a demo config at ``root``, 128 px and ``iters`` iterations."""
    opts = [f'{k}.dataset.data_root={root}'
            for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    opts += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
             'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
             f'param_scheduler.1.end={iters}', f'train_dataloader.batch_size={batch_size}']
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

"""mmdet's and mmseg's own tools/test.py (as installed, ``<package>/.mim/tools/test.py``) load an
official-format checkpoint (written by mmcv 1.x: mmdet 2.x / mmseg 0.x) into a NAT model, with
nothing of ours but the config's ``custom_imports=dict(imports=['nat_mm'])`` and
``custom_hooks=[dict(type='LegacyCheckpointHook')]``: plain ``import nat_mm`` registers the hook
in the registry their Runner builds hooks from (the one test of our own tools/test.py on such a
checkpoint: tests/mm/test_legacy_checkpoint.py).

What the model holds once the tool has loaded the checkpoint is recorded by the test-only
``RankRecordHook`` (nat_mm.testing.rank_record_hook, also imported through ``custom_imports``),
which saves the model's parameters at the end of the run: they must be the checkpoint's, bit for
bit. A tool that skipped the checkpoint would test the randomly initialised model instead.
"""
import re
import time
from collections import OrderedDict

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
import nat_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from nat_mm.mm.build import build_model  # noqa: E402
from nat_mm.testing.tools import DET, ROOT, SEG, data_options, mm_tool, tool  # noqa: E402

CONFIGS = {'mmdet': DET, 'mmseg': SEG}
# The log line of LegacyCheckpointHook when it converts an mmcv 1.x checkpoint.
CONVERTED = re.compile(r'written by mmcv 1\.4\.0 \(mmdet 2\.x / mmseg 0\.x\); converted to the '
                       r'mmengine layout')
METRIC = {'mmdet': re.compile(r'coco/bbox_mAP: [\d.-]+'), 'mmseg': re.compile(r'mIoU: [\d.]+')}


def mmcv1_checkpoint(model, cfg):
    """What mmcv 1.x's ``save_checkpoint`` wrote (the official NAT/DiNAT COCO and ADE20K files):
    ``meta`` with ``mmcv_version`` 1.x, ``CLASSES`` (and ``PALETTE``), the config text, epoch,
    iter and hook messages; the state dict (an OrderedDict); the optimizer state.

    The weights are the model's initialisation plus noise, so no fresh model has them."""
    torch.manual_seed(1)
    state_dict = OrderedDict()
    for key, value in model.state_dict().items():
        if value.is_floating_point() and 'running_var' not in key:
            value = value + 0.02 * torch.randn_like(value)
        state_dict[key] = value.clone()
    metainfo = cfg.train_dataloader.dataset.metainfo
    meta = dict(mmcv_version='1.4.0', time=time.asctime(), CLASSES=tuple(metainfo.classes),
                config=cfg.pretty_text, epoch=36, iter=1000, seed=0, exp_name='official.py',
                hook_msgs=dict(last_ckpt='work_dirs/official/epoch_36.pth'))
    if cfg.default_scope == 'mmseg':
        meta['PALETTE'] = [list(c) for c in metainfo.palette]
    optimizer = dict(state={}, param_groups=[dict(lr=1e-4, weight_decay=0.05, params=[0])])
    return {'meta': meta, 'state_dict': state_dict, 'optimizer': optimizer}


@pytest.mark.slow  # one tool run in a subprocess: about 15 s here
@pytest.mark.parametrize('package', ['mmdet', 'mmseg'])
def test_upstream_test_tool_loads_an_mmcv1_checkpoint(package, demo_data, tmp_path):
    demo = CONFIGS[package]
    config = tmp_path / f'{package}_legacy.py'
    config.write_text(
        f"_base_ = [{f'{ROOT}/{demo}'!r}]\n"
        "custom_imports = dict(imports=['nat_mm', 'nat_mm.testing.rank_record_hook'],\n"
        "                      allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='LegacyCheckpointHook'), dict(type='RankRecordHook')]\n")
    cfg = Config.fromfile(str(config))
    assert cfg.default_scope == package and cfg.model.backbone.type == 'NAT'
    model = build_model(cfg, init_weights=True, seed=0)
    checkpoint = mmcv1_checkpoint(model, cfg)
    path = tmp_path / 'official.pth'
    torch.save(checkpoint, path)

    work = tmp_path / 'work'
    proc = tool(mm_tool(package, 'test.py'), str(config), str(path), '--work-dir', str(work),
                '--launcher', 'none', *data_options(demo, demo_data), timeout=300)
    log = proc.stdout + proc.stderr
    assert CONVERTED.search(log), log[-3000:]  # the hook ran on the loaded checkpoint
    assert METRIC[package].search(log), log[-3000:]  # and the test loop evaluated
    loaded = torch.load(work / 'rank0.pth', map_location='cpu', weights_only=True)['params']
    expected = checkpoint['state_dict']
    assert set(loaded) <= set(expected) and len(loaded) > 100
    assert any(k.startswith('backbone.levels.') for k in loaded)
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key

"""Official NAT/DiNAT COCO / ADE20K checkpoints were written by mmcv 1.x (mmdet 2.19, mmseg 0.20):
tools/test.py loads them with torch's weights_only kept on, and refuses anything else clearly.
(mmdet's and mmseg's own tools/test.py on such a checkpoint: tests/mm/test_upstream_tools.py.)"""
import os.path as osp
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import CheckpointLoader, Runner

import nat_mm  # noqa: F401
from nat_mm.mm import UnsafeCheckpointError
from nat_mm.mm.build import build_model
from nat_mm.mm.legacy_checkpoint import convert_mmcv1_checkpoint, is_mmcv1_checkpoint
from nat_mm.testing.tools import tool_cli

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ADE_CLASSES = tuple(f'class{i}' for i in range(150))
ADE_PALETTE = [[i, 255 - i, (7 * i) % 256] for i in range(150)]


def small_segmentor():
    """UPerNet + DiNAT_s (the layout of the official checkpoints), slimmed for the CPU."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs/seg/upernet_dinat_s_tiny_160k.py'))
    cfg.model.backbone.update(init_cfg=None, embed_dims=32, depths=(1, 1, 1, 1),
                              num_heads=(1, 2, 4, 8), dilations=[[1]] * 4)
    cfg.model.decode_head.update(in_channels=[32, 64, 128, 256], channels=32)
    cfg.model.auxiliary_head.update(in_channels=128, channels=16)
    return cfg, build_model(cfg)  # SyncBN as BN


def mmcv1_checkpoint(model, config_text):
    """What mmcv 1.x's save_checkpoint writes after an mmseg 0.x fp16 run: meta (mmcv_version,
    time, CLASSES, PALETTE, config text, epoch, iter, hook_msgs, seed, exp_name, env_info, the
    fp16 loss scaler), the state dict (an OrderedDict with _metadata) and the optimizer state."""
    torch.manual_seed(1)
    state_dict = model.state_dict()
    for value in state_dict.values():
        if value.is_floating_point():
            value.normal_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    meta = dict(
        env_info='sys.platform: linux\nPython: 3.8.12\nPyTorch: 1.10.0+cu113\nMMCV: 1.4.0',
        config=config_text, seed=0, exp_name='upernet_dinat_s_tiny_512x512_160k_ade20k.py',
        mmseg_version='0.20.2+', CLASSES=ADE_CLASSES, PALETTE=ADE_PALETTE,
        mmcv_version='1.4.0', time=time.asctime(), epoch=1, iter=160000,
        hook_msgs=dict(last_ckpt='work_dirs/upernet_dinat_s_tiny/iter_160000.pth'),
        fp16=dict(loss_scaler=dict(scale=512.0, growth_factor=2.0, backoff_factor=0.5,
                                   growth_interval=2000, _growth_tracker=37)))
    return {'meta': meta, 'state_dict': state_dict, 'optimizer': optimizer.state_dict()}


@pytest.fixture(scope='module')
def legacy(tmp_path_factory):
    cfg, model = small_segmentor()
    checkpoint = mmcv1_checkpoint(model, cfg.pretty_text)
    path = tmp_path_factory.mktemp('legacy') / 'upernet_dinat_s_tiny.pth'
    torch.save(checkpoint, path)
    return cfg, path, {k: v.clone() for k, v in checkpoint['state_dict'].items()}


def test_the_file_loads_with_weights_only(legacy, monkeypatch):
    _, path, _ = legacy
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    assert is_mmcv1_checkpoint(checkpoint)
    assert checkpoint['meta']['CLASSES'] == ADE_CLASSES
    assert checkpoint['optimizer']['state']  # AdamW moments
    # mmengine's loader (what the Runner uses) never passes weights_only=False
    calls, load = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    assert is_mmcv1_checkpoint(CheckpointLoader.load_checkpoint(str(path), map_location='cpu'))
    assert calls and False not in calls, calls


def test_convert_maps_the_meta(legacy):
    _, path, weights = legacy
    converted = convert_mmcv1_checkpoint(torch.load(path, weights_only=True))
    assert set(converted) == {'meta', 'state_dict'}
    assert converted['meta']['dataset_meta']['classes'] == ADE_CLASSES
    assert converted['meta']['dataset_meta']['palette'][3] == tuple(ADE_PALETTE[3])
    assert converted['meta']['iter'] == 160000 and converted['meta']['mmcv_version'] == '1.4.0'
    assert list(converted['state_dict']) == list(weights)


def _runner(cfg, model, tmp_path):
    return Runner(model=model, work_dir=str(tmp_path), default_scope='mmseg',
                  custom_hooks=[dict(type='LegacyCheckpointHook')], cfg=cfg)


def test_runner_loads_it_into_the_model(legacy, tmp_path):
    cfg, path, weights = legacy
    _, model = small_segmentor()
    runner = _runner(cfg, model, tmp_path)
    checkpoint = runner.load_checkpoint(str(path))
    assert checkpoint['meta']['dataset_meta']['classes'] == ADE_CLASSES
    loaded = model.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_tools_test_adds_the_hook(monkeypatch, tmp_path, legacy):
    """tools/test.py puts LegacyCheckpointHook in custom_hooks for the checkpoint it tests."""
    import sys
    _, path, _ = legacy
    tool = tool_cli('test')
    built = {}

    class StopRunner(Exception):
        pass

    def from_cfg(cfg):
        built['cfg'] = cfg
        raise StopRunner

    monkeypatch.setattr(tool.Runner, 'from_cfg', staticmethod(from_cfg))
    monkeypatch.setattr(tool, 'check_data_paths', lambda cfg, loaders: None)
    monkeypatch.setattr(sys, 'argv', ['test.py', osp.join(ROOT, 'configs/seg/'
                                                          'upernet_dinat_s_tiny_160k.py'),
                                      str(path), '--work-dir', str(tmp_path)])
    with pytest.raises(StopRunner):
        tool.main()
    assert built['cfg'].load_from == str(path)
    assert dict(type='LegacyCheckpointHook') in built['cfg'].custom_hooks


def test_anything_else_is_a_clear_error(legacy, tmp_path):
    cfg, path, weights = legacy
    _, model = small_segmentor()
    runner = _runner(cfg, model, tmp_path)
    # an ImageNet backbone checkpoint (no state_dict entry)
    backbone_only = tmp_path / 'dinat_s_tiny_in1k_224.pth'
    torch.save({'model': {k[len('backbone.'):]: v for k, v in weights.items()
                          if k.startswith('backbone.')}}, backbone_only)
    with pytest.raises(TypeError, match='neither an mmengine checkpoint'):
        runner.load_checkpoint(str(backbone_only))
    # a checkpoint of another model: named keys missing
    partial = tmp_path / 'other.pth'
    torch.save({'meta': dict(mmcv_version='1.4.0'),
                'state_dict': {k: v for k, v in weights.items() if 'decode_head' not in k}},
               partial)
    with pytest.raises(RuntimeError, match=r'missing from the checkpoint .*decode_head'):
        runner.load_checkpoint(str(partial))
    # shapes that do not fit
    wrong = dict(weights)
    wrong['decode_head.conv_seg.weight'] = torch.zeros(19, 32, 1, 1)
    torch.save({'meta': dict(mmcv_version='1.3.17'), 'state_dict': wrong}, partial)
    with pytest.raises(RuntimeError, match='conv_seg.weight: checkpoint'):
        runner.load_checkpoint(str(partial))


def test_weights_only_stays_on(tmp_path):
    """A checkpoint carrying an arbitrary callable still fails: nothing turns weights_only off."""
    path = tmp_path / 'evil.pth'
    torch.save({'meta': dict(mmcv_version='1.4.0', hook=print), 'state_dict': {}}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'refused to load the checkpoint .*evil\.pth: '
                       r'its pickle names print\b'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


@pytest.mark.slow  # a subprocess: about 5 s here
def test_import_nat_mm_registers_the_hook_for_mmdet_and_mmseg_runners(tmp_path):
    """Plain ``import nat_mm`` (what ``custom_imports=dict(imports=['nat_mm'])`` does), in a
    fresh process, is enough for a Runner of an mmdet- and of an mmseg-scoped config to build
    ``custom_hooks=[dict(type='LegacyCheckpointHook')]``: the Runner builds hooks in mmengine's
    HOOKS switched to its default scope, i.e. in mmdet's / mmseg's child HOOKS, which look the
    name up in the root registry, where the hook is."""
    code = textwrap.dedent(f"""
        import sys
        import torch
        from mmengine.config import Config
        from mmengine.registry import HOOKS
        from mmengine.runner import Runner
        assert HOOKS.get('LegacyCheckpointHook') is None and 'nat_mm' not in sys.modules
        import nat_mm
        for scope in ('mmdet', 'mmseg'):
            runner = Runner.from_cfg(Config(dict(
                model=torch.nn.Linear(1, 1), work_dir={str(tmp_path)!r} + '/' + scope,
                default_scope=scope, experiment_name=scope,
                custom_hooks=[dict(type='LegacyCheckpointHook')])))
            hooks = [h for h in runner.hooks if type(h).__name__ == 'LegacyCheckpointHook']
            with HOOKS.switch_scope_and_registry(scope) as registry:
                found = registry.get('LegacyCheckpointHook')
            print('RESULT', scope, registry.scope, len(hooks), type(hooks[0]).__module__,
                  found is type(hooks[0]) is nat_mm.mm.LegacyCheckpointHook)
        """)
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith('RESULT')]
    assert lines == [f'RESULT {scope} {scope} 1 nat_mm.mm.legacy_checkpoint True'
                     for scope in ('mmdet', 'mmseg')]

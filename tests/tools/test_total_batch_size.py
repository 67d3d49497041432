"""`tools/train.py --total-batch-size 16`: the papers' 16 images per batch on any number of GPUs."""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture
def runtime():
    """Where tools/train.py's batch split lives."""
    from nat_mm.mm import runtime
    return runtime


@pytest.fixture
def train_tool():
    """tools/train.py's command line, in this process."""
    from nat_mm.testing.tools import tool_cli
    return tool_cli('train')


@pytest.mark.parametrize('world,per_gpu', [(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)])
def test_splits_evenly(runtime, world, per_gpu):
    assert runtime.per_process_batch_size(16, world) == per_gpu


@pytest.mark.parametrize('world', [3, 5, 6, 32])
def test_refuses_uneven_splits(runtime, world):
    with pytest.raises(ValueError, match=f'cannot be split evenly over {world} processes'):
        runtime.per_process_batch_size(16, world)
    with pytest.raises(ValueError, match='>= 1'):
        runtime.per_process_batch_size(0, 1)


def test_world_size_from_the_launcher(runtime, monkeypatch):
    assert runtime.world_size('none') == 1
    monkeypatch.setenv('WORLD_SIZE', '4')
    assert runtime.world_size('pytorch') == 4
    monkeypatch.setenv('SLURM_NTASKS', '8')
    assert runtime.world_size('slurm') == 8
    monkeypatch.delenv('WORLD_SIZE')
    with pytest.raises(RuntimeError, match='cannot tell the world size'):
        runtime.world_size('pytorch')


@pytest.mark.parametrize('config', ['configs/det/mask_rcnn_dinat_s_tiny_3x.py',
                                    'configs/seg/upernet_dinat_s_tiny_160k.py'])
def test_train_sets_the_per_gpu_batch(train_tool, monkeypatch, tmp_path, config):
    built = {}

    class Stop(Exception):
        pass

    def from_cfg(cfg):
        built['cfg'] = cfg
        raise Stop

    monkeypatch.setattr(train_tool.Runner, 'from_cfg', staticmethod(from_cfg))
    monkeypatch.setattr(train_tool, 'check_data_paths', lambda cfg, loaders: None)
    monkeypatch.setattr(train_tool, 'check_pretrained', lambda cfg: None)
    monkeypatch.setattr(train_tool, 'init_cpu_distributed', lambda cfg, launcher: None)
    monkeypatch.setenv('LOCAL_RANK', '0')  # train.py exports it otherwise
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setattr(sys, 'argv', ['train.py', osp.join(ROOT, config), '--work-dir',
                                      str(tmp_path), '--launcher', 'pytorch',
                                      '--total-batch-size', '16'])
    with pytest.raises(Stop):
        train_tool.main()
    assert built['cfg'].train_dataloader.batch_size == 4
    monkeypatch.setenv('WORLD_SIZE', '3')
    with pytest.raises(ValueError, match='cannot be split evenly over 3'):
        train_tool.main()

"""Remote checkpoints (http(s) URLs and mmengine's download schemes) load with weights_only=True.

A checkpoint server runs on 127.0.0.1 (a free port, in a thread, for one test). The hostile
checkpoint is a real mmengine-style checkpoint whose pickle also calls ``os.system('touch
MARKER')``: loading it unsafely creates MARKER, so every test asserts MARKER never appears.
Torch hub's download cache goes to the test's tmp_path (``TORCH_HOME``).
"""
import http.server
import os
import shlex
import shutil
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')
from mmengine.runner import CheckpointLoader, load_checkpoint  # noqa: E402
from mmengine.runner import checkpoint as mm_checkpoint  # noqa: E402

from nat_mm.mm import NAT, UnsafeCheckpointError, load_pretrained  # noqa: E402
from nat_mm.mm import checkpoint_io, remote_checkpoint  # noqa: E402
from nat_mm.testing.official import (assert_backbone_loaded,  # noqa: E402
                                     official_cls_state_dict)
from nat_mm.testing.runner import train_toy_runner  # noqa: E402
from nat_mm.testing.tools import ENV, SEG, data_options, tool  # noqa: E402


class _RunsCode:
    """Unpickles as ``os.system('touch MARKER')``: arbitrary code, harmless and observable."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(str(self.marker))}', )


def write_hostile(path, marker):
    """A checkpoint that looks like a real one, plus a pickle that runs a shell command."""
    torch.save({'state_dict': {'linear.weight': torch.ones(1, 2)}, 'meta': _RunsCode(marker)},
               path)


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """Torch hub's cache in tmp_path, and no proxy between us and 127.0.0.1."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('NO_PROXY', '127.0.0.1')
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    assert torch.hub.get_dir().startswith(str(tmp_path)), 'torch.hub.set_dir() was called'
    return tmp_path / 'torch'


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/served`` over http on 127.0.0.1 (free port) for one test.

    Yields a namespace with ``root`` (the served folder), ``url(name)`` and ``requests`` (the
    paths requested, in order).
    """
    root = tmp_path / 'served'
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_request(self, code='-', size='-'):
            requests.append(self.path)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(
            root=root, requests=requests,
            url=lambda name: f'http://127.0.0.1:{httpd.server_port}/{name}')
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def hostile(server, tmp_path):
    """``(url, marker)`` of a hostile checkpoint on the server."""
    marker = tmp_path / 'pwned'
    write_hostile(server.root / 'hostile.pth', marker)
    return server.url('hostile.pth'), marker


def assert_refused(excinfo, source, marker):
    message = str(excinfo.value)
    assert f'refused to load the checkpoint {source}' in message
    assert 'posix.system' in message  # why
    assert 're-save just its tensors from trusted code' in message  # what to do
    assert not marker.exists(), 'the hostile pickle ran'


# --- the hole and the registration -------------------------------------------------------------

def test_mmengines_own_http_loader_runs_the_hostile_pickle(hostile):
    """What this protects against: mmengine's loader (torch hub, weights_only=False) runs the
    pickle. Also shows the fixture is live, so the refusals below are not vacuous."""
    url, marker = hostile
    mm_checkpoint.load_from_http(url, map_location='cpu')
    assert marker.exists()


@pytest.mark.parametrize('path', [
    'http://host/x.pth', 'https://host/x.pth', 'torchvision://resnet50', 'modelzoo://resnet50',
    'open-mmlab://x', 'openmmlab://x', 'mmcls://x', 'pavi://x', 's3://bucket/x.pth',
    'cluster:s3://bucket/x.pth', 'petrel://bucket/x.pth'
])
def test_every_remote_scheme_has_a_weights_only_loader(path):
    loader = CheckpointLoader._get_checkpoint_loader(path)
    assert loader.__module__ == remote_checkpoint.__name__, loader


def test_no_scheme_is_left_to_mmengines_loaders():
    """Every registered prefix is ours, the local one ('') included (nat_mm's one loader, with
    its errors): a scheme added by a newer mmengine fails here instead of loading unsafely."""
    others = {prefix: loader for prefix, loader in CheckpointLoader._schemes.items()
              if loader.__module__ != remote_checkpoint.__name__}
    assert others == {'': checkpoint_io.load_from_local}


# --- hostile checkpoints are refused, in-process ----------------------------------------------

def _load_with_checkpoint_loader(url):
    CheckpointLoader.load_checkpoint(url, map_location='cpu')


def _load_checkpoint_into_model(url):
    model = nn.Module()
    model.linear = nn.Linear(2, 1)
    load_checkpoint(model, url, map_location='cpu')


def _load_pretrained(url):
    load_pretrained(NAT(arch='mini'), url)


def _init_cfg_pretrained(url):
    NAT(arch='mini', init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights()


def _runner_load_from(url, work_dir):
    train_toy_runner(work_dir, max_epochs=1, load_from=url)


def _runner_resume(url, work_dir):
    train_toy_runner(work_dir, max_epochs=1, resume=True, load_from=url)


@pytest.mark.parametrize('load', [
    _load_with_checkpoint_loader, _load_checkpoint_into_model, _load_pretrained,
    _init_cfg_pretrained, _runner_load_from, _runner_resume
], ids=['CheckpointLoader', 'load_checkpoint', 'load_pretrained', 'init_cfg', 'load_from',
        'resume'])
def test_hostile_http_checkpoint_is_refused(load, hostile, tmp_path, torch_home):
    url, marker = hostile
    args = (url, tmp_path / 'work') if load in (_runner_load_from, _runner_resume) else (url, )
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        load(*args)
    assert_refused(excinfo, url, marker)
    cached = torch_home / 'hub' / 'checkpoints' / 'hostile.pth'
    assert f'The downloaded copy is {cached}' in str(excinfo.value)
    # Loading it again from the cache is refused the same way.
    with pytest.raises(UnsafeCheckpointError):
        load(*args)
    assert not marker.exists()


@pytest.mark.parametrize('scheme,lookup', [
    ('open-mmlab://', 'get_external_models'), ('openmmlab://', 'get_external_models'),
    ('torchvision://', 'get_torchvision_models'), ('modelzoo://', 'get_torchvision_models'),
    ('mmcls://', 'get_mmcls_models')
])
def test_hostile_checkpoint_behind_an_alias_is_refused(scheme, lookup, hostile, monkeypatch):
    url, marker = hostile
    monkeypatch.setattr(mm_checkpoint, lookup, lambda: {'nat_hostile': url})
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        CheckpointLoader.load_checkpoint(scheme + 'nat_hostile', map_location='cpu')
    assert_refused(excinfo, f'{scheme}nat_hostile ({url})', marker)


def test_hostile_checkpoint_via_pavi_and_s3_is_refused(hostile, server, monkeypatch):
    _, marker = hostile
    path = server.root / 'hostile.pth'

    class Model:
        name = 'hostile.pth'

        def download(self, dst):
            shutil.copy(path, dst)

    pavi = SimpleNamespace(modelcloud=SimpleNamespace(get=lambda name: Model()))
    monkeypatch.setitem(sys.modules, 'pavi', pavi)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        CheckpointLoader.load_checkpoint('pavi://lab/hostile.pth', map_location='cpu')
    assert_refused(excinfo, 'pavi://lab/hostile.pth', marker)

    backend = SimpleNamespace(get=lambda filename: path.read_bytes())
    monkeypatch.setattr(remote_checkpoint, 'get_file_backend', lambda *a, **k: backend)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        CheckpointLoader.load_checkpoint('cluster:s3://bucket/hostile.pth', map_location='cpu')
    assert_refused(excinfo, 'cluster:s3://bucket/hostile.pth', marker)


# --- downloads that fail, or that are no checkpoint -------------------------------------------

def test_missing_url_names_the_checkpoint_and_its_config_key(server):
    url = server.url('nat_mini.pth')  # not served: HTTP 404
    model = NAT(arch='mini', init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(checkpoint_io.CheckpointFetchError) as excinfo:
        model.init_weights()
    message = str(excinfo.value)
    assert f'could not fetch the checkpoint {url} (set by model.backbone.init_cfg.checkpoint): ' \
        in message
    assert 'HTTP Error 404' in message
    assert '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/nat_mini.pth' in message


def test_a_web_page_instead_of_the_checkpoint_is_named_so(server, torch_home):
    (server.root / 'nat_mini.pth').write_text('<!DOCTYPE html><html>Sign in</html>')
    url = server.url('nat_mini.pth')
    with pytest.raises(checkpoint_io.UnreadableCheckpointError) as excinfo:
        CheckpointLoader.load_checkpoint(url, map_location='cpu')
    message = str(excinfo.value)
    cached = torch_home / 'hub' / 'checkpoints' / 'nat_mini.pth'
    assert f'cannot load the checkpoint {url} (35 bytes): it is an HTML/XML page' in message
    assert f'The downloaded copy is {cached}: delete it to download again' in message


# --- legitimate checkpoints load as from a file -----------------------------------------------

def test_runner_checkpoint_over_http_equals_the_file(runner_checkpoint, server, torch_home):
    shutil.copy(runner_checkpoint, server.root / 'epoch_1.pth')
    url = server.url('epoch_1.pth')
    from_file = torch.load(runner_checkpoint, map_location='cpu', weights_only=True)
    from_url = CheckpointLoader.load_checkpoint(url, map_location='cpu')
    assert from_url.keys() == from_file.keys()
    for key, value in from_file['state_dict'].items():
        torch.testing.assert_close(from_url['state_dict'][key], value, rtol=0, atol=0)
    assert from_url['meta']['epoch'] == 1
    loss = from_url['message_hub']['log_scalars']['train/loss']  # the safe globals apply
    assert loss.mean() == from_file['message_hub']['log_scalars']['train/loss'].mean()
    assert (torch_home / 'hub' / 'checkpoints' / 'epoch_1.pth').is_file()
    # The download cache is used; map_location is passed on.
    on_meta = CheckpointLoader.load_checkpoint(url, map_location='meta')
    assert on_meta['state_dict']['linear.weight'].device.type == 'meta'
    assert server.requests == ['/epoch_1.pth']


def test_runner_resumes_from_http(runner_checkpoint, server, tmp_path):
    shutil.copy(runner_checkpoint, server.root / 'epoch_1.pth')
    runner = train_toy_runner(tmp_path / 'work', max_epochs=2, resume=True,
                                load_from=server.url('epoch_1.pth'))
    assert runner.epoch == 2 and runner.iter == 4  # resumed at epoch 1, trained one more


def test_official_classification_checkpoint_over_http_initialises_the_backbone(server):
    sd = official_cls_state_dict()
    torch.save({'model': sd}, server.root / 'nat_mini.pth')
    model = NAT(arch='mini', init_cfg=dict(type='Pretrained',
                                           checkpoint=server.url('nat_mini.pth')))
    model.init_weights()
    assert_backbone_loaded(model, sd)


def test_legitimate_checkpoint_behind_mmcls_alias_keeps_the_backbone(server, monkeypatch):
    weights = {'backbone.conv.weight': torch.randn(2, 3), 'head.fc.weight': torch.randn(4)}
    torch.save({'state_dict': weights}, server.root / 'cls.pth')
    monkeypatch.setattr(mm_checkpoint, 'get_mmcls_models',
                        lambda: {'nat_cls': server.url('cls.pth')})
    loaded = CheckpointLoader.load_checkpoint('mmcls://nat_cls', map_location='cpu')
    assert list(loaded['state_dict']) == ['conv.weight']
    torch.testing.assert_close(loaded['state_dict']['conv.weight'],
                               weights['backbone.conv.weight'], rtol=0, atol=0)


# --- the tools, as a user runs them -----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('how', ['test.py', 'load_from', '--resume', 'init_cfg'])
def test_tools_refuse_hostile_http_checkpoint(how, hostile, demo_data, tmp_path):
    url, marker = hostile
    env = dict(ENV, TORCH_HOME=str(tmp_path / 'torch'), NO_PROXY='127.0.0.1',
               no_proxy='127.0.0.1')
    work = ['--work-dir', str(tmp_path / 'work')]
    opts = data_options(SEG, demo_data)
    if how == 'test.py':
        args = ['tools/test.py', SEG, url, *work, *opts]
    elif how == 'load_from':
        args = ['tools/train.py', SEG, *work, *opts, f'load_from={url}']
    elif how == '--resume':
        args = ['tools/train.py', SEG, '--resume', url, *work, *opts]
    else:
        args = ['tools/train.py', SEG, *work, *opts, 'model.backbone.init_cfg._delete_=True',
                'model.backbone.init_cfg.type=Pretrained',
                f'model.backbone.init_cfg.checkpoint={url}']
    proc = tool(*args, env=env, check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not marker.exists(), 'the hostile pickle ran'
    assert f'error: refused to load the checkpoint {url}' in proc.stderr, proc.stderr[-3000:]
    assert 'posix.system' in proc.stderr and 're-save just its tensors' in proc.stderr
    assert 'Traceback' not in proc.stderr

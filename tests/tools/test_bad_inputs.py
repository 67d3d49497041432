"""Every tool, given bad input, exits with one ``error:`` line: no traceback, no advice to turn
``weights_only`` off, and a hostile checkpoint never runs.

The table :data:`CASES` is run once (module fixture) by ``nat_mm.testing.fork_runner``, which
pays the 5-15 s of imports once and forks one process per case (two at a time); each case then
runs its tool's ``__main__`` as ``python tools/X.py ARGS`` would. Two cases also run as plain
``python tools/X.py`` subprocesses, side by side with the runner, and must print the same error
line, which checks the runner itself. The hostile checkpoint's pickle calls ``os.system('touch
MARKER')``: every case that reads it must refuse it, and MARKER must never appear.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import List

import pytest
import torch

from nat_mm.testing.tools import ENV, ROOT, SEG, data_options, free_port

pytestmark = pytest.mark.slow

DINAT_DET = 'configs/det/mask_rcnn_dinat_mini_3x.py'  # init_cfg: the ImageNet URL
DET = 'configs/det/demo_mask_rcnn_nat_mini.py'
NO_INIT = ['--cfg-options', 'model.backbone.init_cfg=None']  # nothing to download
WORKERS = 2
# torch's advice for a refused file, in any of its wordings, and its allow-list hint
ADVICE = re.compile(r'weights_only`? *(set to|=) *`?False|Re-running `?torch\.load|'
                    r'add_safe_globals|safe_globals\(\[', re.I)


@dataclass
class Case:
    """One bad command line: the tool, its arguments (``{name}`` is a file of :func:`files`),
    and the words its error line must contain (regular expressions)."""
    id: str
    argv: List[str]
    words: List[str]
    timeout: int = 300
    plain: bool = False  # also run as a plain `python tools/X.py` subprocess
    reads_hostile: bool = field(init=False, default=False)

    def __post_init__(self):
        self.reads_hostile = any('{hostile}' in a for a in self.argv)


def _test(ckpt):
    return ['tools/test.py', SEG, ckpt, '--work-dir', '{work}/test', *data_options(SEG,
                                                                                     '{data}')]


def _train(*options):
    opts = data_options(SEG, '{data}')
    return ['tools/train.py', SEG, '--work-dir', '{work}/train', *opts, *options]


CASES = [
    # tools/train.py
    Case('train-missing-config', ['tools/train.py', 'configs/det/nope.py'],
         ['config not found: configs/det/nope.py', 'Give the path of an mmdet/mmseg config'],
         plain=True),
    Case('train-config-syntax-error', ['tools/train.py', '{broken_cfg}'],
         ['config .*broken.py has a syntax error']),
    Case('train-config-without-model', ['tools/train.py', '{nomodel_cfg}'],
         ['nomodel.py defines no model', 'give a detector or segmentor config']),
    Case('train-cfg-options-no-equals', ['tools/train.py', SEG, '--cfg-options', 'foo'],
         ['argument --cfg-options: expected KEY=VALUE pairs', "got 'foo'"]),
    Case('train-cfg-options-bad-index',
         ['tools/train.py', SEG, '--cfg-options', 'train_dataloader.dataset.pipeline.99.x=1'],
         ['--cfg-options .*pipeline.99.x=1 do not fit the config', 'Index 99']),
    Case('train-missing-resume', ['tools/train.py', SEG, '--resume', '{work}/iter_9.pth'],
         ['--resume checkpoint not found: .*iter_9.pth']),
    Case('train-resnet-model-pretrained', _train('model.pretrained={resnet}'),
         ['does not fit the NAT backbone', 'missing from the checkpoint',
          'looks like a ResNet checkpoint', 'set by model.pretrained',
          'set model.pretrained=None']),
    Case('train-empty-load-from', _train('load_from={empty}'),
         [r'cannot load the checkpoint .*empty.pth \(set by load_from\) \(0 bytes\)',
          'the file is empty']),
    # tools/test.py: the checkpoint is read by mmengine's Runner, through our loader
    Case('test-hostile-checkpoint', _test('{hostile}'),
         ['refused to load the checkpoint .*hostile.pth', 'posix.system',
          'nothing of it was run', 're-save just its tensors from trusted code'],
         plain=True),
    Case('test-truncated-checkpoint', _test('{truncated}'),
         [r'cannot load the checkpoint .*truncated.pth \(set by the CHECKPOINT argument\) '
          r'\(\d+ bytes\)', 'truncated or damaged zip archive']),
    Case('test-resnet-checkpoint', _test('{resnet}'),
         ['does not fit the model of this config', 'looks like a ResNet checkpoint']),
    Case('test-missing-checkpoint', _test('{work}/missing.pth'),
         ['checkpoint not found: .*missing.pth']),
    Case('test-out-not-pickle', ['tools/test.py', DET, '{empty}', '--out', 'preds.json'],
         [r'--out must be a \.pkl or \.pickle file, got preds.json']),
    # tools/convert_checkpoint.py: reads the file itself, through the same loader
    Case('convert-hostile', ['tools/convert_checkpoint.py', '{hostile}', '{work}/out.pth'],
         ['refused to load the checkpoint .*hostile.pth', 'posix.system',
          're-save just its tensors']),
    Case('convert-text-file', ['tools/convert_checkpoint.py', '{notes}', '{work}/out.pth'],
         [r'cannot load the checkpoint .*notes.pth \(\d+ bytes\)',
          "does not start like a file written by torch.save .*b'these are notes"]),
    Case('convert-plain-pickle', ['tools/convert_checkpoint.py', '{plain_pickle}',
                                  '{work}/out.pth'],
         ['plain pickle, not a file written by torch.save']),
    Case('convert-resnet', ['tools/convert_checkpoint.py', '{resnet}', '{work}/out.pth'],
         ['resnet.pth is not a NAT/DiNAT checkpoint', 'looks like a ResNet checkpoint']),
    Case('convert-dst-dir-missing', ['tools/convert_checkpoint.py', '{resnet}',
                                     '{work}/no/such/dir/out.pth'],
         ['the directory of dst .*out.pth does not exist']),
    # tools/get_flops.py
    Case('flops-zero-shape', ['tools/get_flops.py', DINAT_DET, '--shape', '0', '10'],
         ['argument --shape: expected a positive integer, got 0']),
    Case('flops-config-without-task', ['tools/get_flops.py', '{noscope_cfg}'],
         ['cannot tell the task of the config .*noscope.py', "default_scope=None"]),
    # tools/visualize_attention.py
    Case('viz-unreachable-init-cfg-url',
         ['tools/visualize_attention.py', DINAT_DET, '{image}', '--points', '5,5',
          '--out-dir', '{work}/viz', '--cfg-options',
          'model.backbone.init_cfg.checkpoint={url}'],
         ['could not fetch the checkpoint http://127.0.0.1:\\d+/dinat_mini.pth',
          'set by model.backbone.init_cfg.checkpoint',
          '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/dinat_mini.pth']),
    Case('viz-bad-points', ['tools/visualize_attention.py', SEG, '{image}', '--points', '5;5',
                            '--out-dir', '{work}/viz'],
         ['argument --points: a point is y,x in pixels']),
    Case('viz-missing-image', ['tools/visualize_attention.py', SEG, '{work}/nope.png',
                               '--points', '5,5', '--out-dir', '{work}/viz'],
         ['image not found: .*nope.png']),
    Case('viz-not-an-image', ['tools/visualize_attention.py', SEG, '{notes}', '--points', '5,5',
                              '--out-dir', '{work}/viz'],
         ['cannot read the image .*notes.pth: not an image file']),
    Case('viz-not-a-nat-backbone', ['tools/visualize_attention.py', '{resnet_cfg}', '{image}',
                                    '--points', '5,5', '--out-dir', '{work}/viz'],
         ['resnet_cfg.py has a ResNet backbone', 'NAT and DiNAT backbones only']),
    Case('viz-point-outside', ['tools/visualize_attention.py', SEG, '{image}', '--points',
                               '100,5', '--out-dir', '{work}/viz'],
         [r'--points: point \(100, 5\) is outside the 64x80 image', r'y in \[0, 63\]']),
    Case('viz-resnet-checkpoint', ['tools/visualize_attention.py', SEG, '{image}', '--points',
                                   '5,5', '--checkpoint', '{resnet}', '--out-dir', '{work}/viz'],
         ['resnet.pth .*set by --checkpoint.* does not fit the model',
          'looks like a ResNet checkpoint']),
    # tools/infer.py
    Case('infer-missing-inputs', ['tools/infer.py', '{work}/nowhere', SEG, '{resnet}',
                                  '--out-dir', '{work}/infer'],
         ['no such image or directory: .*nowhere']),
    Case('infer-dir-without-images', ['tools/infer.py', '{empty_dir}', SEG, '{resnet}',
                                      '--out-dir', '{work}/infer'],
         ['no images .* in .*empty_dir']),
    Case('infer-hostile', ['tools/infer.py', '{image}', SEG, '{hostile}', '--out-dir',
                           '{work}/infer', '--device', 'cpu'],
         ['refused to load the checkpoint .*hostile.pth', 'posix.system']),
    # tools/export_onnx.py
    Case('export-negative-shape', ['tools/export_onnx.py', SEG, '--shape', '-1', '64', '--out',
                                   '{work}/m.onnx'],
         ['argument --shape: expected a positive integer, got -1']),
    Case('export-detector-whole', ['tools/export_onnx.py', DET, '--shape', '64', '64', '--out',
                                   '{work}/m.onnx', '--no-check'],
         ['cannot export the whole MaskRCNN', 'Export the backbone with --backbone']),
    # the benchmark and demo tools
    Case('benchmark-model-missing-config', ['tools/benchmark_model.py', 'configs/nope.py'],
         ['config not found: configs/nope.py']),
    Case('benchmark-backbone-bad-device', ['tools/benchmark_backbone.py', '--device', 'tpu'],
         ["--device must be cpu or cuda\\[:i\\], got 'tpu'"]),
    Case('prepare-demo-zero-tile', ['tools/prepare_demo_data.py', '--tile', '0'],
         ['argument --tile: expected a positive integer, got 0']),
]


class _RunsCode:
    """Unpickles as ``os.system('touch MARKER')``: arbitrary code, harmless and observable."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(str(self.marker))}', )


def files(root, data_root):
    """The bad inputs (and a few good ones), by the names the cases use."""
    import pickle

    import cv2
    import numpy as np
    paths = {name: root / name for name in (
        'hostile.pth', 'truncated.pth', 'empty.pth', 'notes.pth', 'plain_pickle.pth',
        'resnet.pth', 'broken.py', 'nomodel.py', 'noscope.py', 'resnet_cfg.py', 'image.png',
        'empty_dir')}
    marker = root / 'pwned'
    torch.save({'state_dict': {'linear.weight': torch.ones(1, 2)}, 'meta': _RunsCode(marker)},
               paths['hostile.pth'])
    good = root / 'good.pth'
    torch.save({'state_dict': {f'w{i}': torch.randn(64) for i in range(8)}, 'meta': {}}, good)
    data = good.read_bytes()
    paths['truncated.pth'].write_bytes(data[:len(data) // 2])
    paths['empty.pth'].write_bytes(b'')
    paths['notes.pth'].write_text('these are notes, not weights\n')
    with open(paths['plain_pickle.pth'], 'wb') as f:
        pickle.dump({'state_dict': {'w': [1.0, 2.0]}}, f, protocol=4)
    resnet = {'conv1.weight': torch.zeros(4, 3, 7, 7), 'bn1.weight': torch.ones(4),
              'layer1.0.conv1.weight': torch.zeros(4, 4, 1, 1), 'fc.weight': torch.zeros(2, 4)}
    torch.save({'state_dict': resnet, 'meta': {}}, paths['resnet.pth'])
    paths['broken.py'].write_text("model = dict(type='NAT',\n")
    paths['nomodel.py'].write_text("default_scope = 'mmdet'\n")
    paths['noscope.py'].write_text("model = dict(type='EncoderDecoder')\n")
    paths['resnet_cfg.py'].write_text("_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']\n"
                                      "default_scope = 'mmdet'\n")
    cv2.imwrite(str(paths['image.png']), np.full((64, 80, 3), 127, np.uint8))
    paths['empty_dir'].mkdir()
    names = {k.split('.')[0]: str(v) for k, v in paths.items()}
    names.update(broken_cfg=names.pop('broken'), nomodel_cfg=names.pop('nomodel'),
                 noscope_cfg=names.pop('noscope'), work=str(root / 'work'), data=data_root,
                 url=f'http://127.0.0.1:{free_port()}/dinat_mini.pth')
    return names, marker


@pytest.fixture(scope='module')
def runs(tmp_path_factory, demo_data):
    """Run every case (the fork runner, plus the plain subprocesses alongside); return
    ``(results, plain results, marker)``."""
    root = tmp_path_factory.mktemp('bad_inputs')
    names, marker = files(root, demo_data)
    (root / 'work').mkdir()
    cases = [dict(id=c.id, argv=[a.format(**names) for a in c.argv], timeout=c.timeout)
             for c in CASES]
    (root / 'cases.json').write_text(json.dumps(cases))
    env = dict(ENV, TORCH_HOME=str(root / 'torch'), NO_PROXY='127.0.0.1', no_proxy='127.0.0.1',
               MPLBACKEND='Agg')
    plain = {c['id']: subprocess.Popen([sys.executable, *c['argv']], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
             for c, case in zip(cases, CASES) if case.plain}
    runner = subprocess.run(
        [sys.executable, '-m', 'nat_mm.testing.fork_runner',
         str(root / 'cases.json'), str(root / 'results.json'), str(WORKERS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert runner.returncode == 0, runner.stderr[-3000:]
    results = json.loads((root / 'results.json').read_text())
    plain_results = {}
    for case_id, proc in plain.items():
        out, err = proc.communicate(timeout=600)
        plain_results[case_id] = dict(returncode=proc.returncode, stdout=out, stderr=err)
    return results, plain_results, marker


def _error_line(result, case: Case) -> str:
    """The one ``<tool>: error: ...`` line of stderr (its last line), checked for the rest."""
    stderr = result['stderr']
    log = f'{case.id}: rc={result["returncode"]}\n--- stderr\n{stderr[-3000:]}'
    assert 'Traceback' not in stderr, log
    lines = [line for line in stderr.splitlines() if re.search(r'\berror:', line)]
    prog = os.path.basename(case.argv[0])
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), log
    assert stderr.rstrip().splitlines()[-1] == lines[0], log
    return lines[0]


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_error_line(case, runs):
    results, _, marker = runs
    result = results[case.id]
    line = _error_line(result, case)
    assert result['returncode'] == 2, (result['returncode'], line)
    for word in case.words:
        assert re.search(word, line), f'{word!r} not in {line!r}'
    assert not ADVICE.search(result['stdout'] + result['stderr']), line
    assert not marker.exists(), 'the hostile pickle ran'


def test_the_table():
    """At least 25 cases, every tool of the issue among them, hostile and truncated files too;
    every case that reads the hostile checkpoint is refused with the global it names."""
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    tools = {c.argv[0] for c in CASES}
    assert {'tools/train.py', 'tools/test.py', 'tools/convert_checkpoint.py',
            'tools/get_flops.py', 'tools/visualize_attention.py', 'tools/infer.py',
            'tools/export_onnx.py'} <= tools
    hostile = [c for c in CASES if c.reads_hostile]
    assert len(hostile) >= 3 and all('posix.system' in c.words for c in hostile)
    assert any('{truncated}' in a for c in CASES for a in c.argv)


def test_plain_subprocesses_print_the_same_error(runs):
    """The fork runner is faithful: the cases also run as `python tools/X.py` print the same
    error line with the same exit status."""
    results, plain, marker = runs
    assert plain, 'no case runs as a plain subprocess'
    for case in CASES:
        if case.plain:
            line = _error_line(plain[case.id], case)
            assert plain[case.id]['returncode'] == results[case.id]['returncode'] == 2
            assert line == _error_line(results[case.id], case)
    assert not marker.exists(), 'the hostile pickle ran'


def test_internal_errors_keep_their_traceback():
    """Only user-input errors are shortened: any other exception leaves nat_mm.mm.cli.run as
    it is, so the interpreter prints its traceback."""
    from nat_mm.mm.cli import UserInputError, run

    def crashing():
        raise KeyError('a bug')

    with pytest.raises(KeyError, match='a bug'):
        run(crashing)

    def refusing():
        raise UserInputError('bad input')

    with pytest.raises(SystemExit) as info:
        run(refusing)
    assert info.value.code == 2
    assert run(lambda: None) is None and run(lambda: 0) is None  # success: no SystemExit
    with pytest.raises(SystemExit) as info:
        run(lambda: 1)  # e.g. tools/make_zoo.py --check on a stale zoo
    assert info.value.code == 1

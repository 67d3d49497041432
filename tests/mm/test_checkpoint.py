"""Checkpoint conversion (official, det/seg, Hugging Face), pretrained loading through init_cfg,
and mmengine Runner checkpoints under torch.load(weights_only=True)."""
import ast
import copy
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')
import nat_mm  # noqa: E402
from nat_mm import models  # noqa: E402
from nat_mm.mm import (NAT, convert_state_dict, detect_format, infer_nat_kwargs,  # noqa: E402
                       load_pretrained)
from nat_mm.mm import checkpoint as mm_checkpoint  # noqa: E402
from nat_mm.mm.checkpoint import infer_backbone_kwargs, infer_dinat_s_kwargs  # noqa: E402
from nat_mm.mm.checkpoint_io import CheckpointContentError  # noqa: E402
from nat_mm.models import convert  # noqa: E402
from nat_mm.testing.official import (NAT_OFFICIAL, assert_backbone_loaded,  # noqa: E402
                                     official_cls_state_dict)
from nat_mm.testing.runner import train_toy_runner  # noqa: E402
from nat_mm.testing.tools import tool_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(arch='small', depths=(1, 2, 1, 1), drop_path_rate=0.)  # layer scale on


def to_hf_layout(sd, prefix='nat.'):
    """Write a nat_mm state dict the way transformers' NatForImageClassification names it."""
    hf = {}
    for key, value in sd.items():
        parts = key.split('.')
        if key.startswith('patch_embed.proj.'):
            hf['embeddings.patch_embeddings.projection.' + '.'.join(parts[2:])] = value
        elif key.startswith('patch_embed.norm.'):
            hf['embeddings.norm.' + parts[-1]] = value
        elif '.downsample.' in key:
            hf['encoder.' + key] = value
        elif key.startswith('levels.'):
            base = f'encoder.levels.{parts[1]}.layers.{parts[3]}.'
            rest = '.'.join(parts[4:])
            if rest in ('gamma1', 'gamma2'):
                continue
            if rest.startswith('attn.qkv.'):
                for name, chunk in zip(('query', 'key', 'value'), value.chunk(3, dim=0)):
                    hf[f'{base}attention.self.{name}.{parts[-1]}'] = chunk.clone()
                continue
            renames = {'norm1': 'layernorm_before', 'attn.rpb': 'attention.self.rpb',
                       'attn.proj': 'attention.output.dense', 'norm2': 'layernorm_after',
                       'mlp.fc1': 'intermediate.dense', 'mlp.fc2': 'output.dense'}
            for ours, theirs in renames.items():
                if rest == ours or rest.startswith(ours + '.'):
                    hf[base + theirs + rest[len(ours):]] = value
        elif key.startswith('norm.'):
            hf['layernorm.' + parts[-1]] = value
        elif key[:4] == 'norm' and key[4].isdigit():  # NatBackbone output norms
            hf[f'hidden_states_norms.stage{int(parts[0][4:]) + 1}.{parts[-1]}'] = value
        elif key.startswith('head.'):
            hf['classifier.' + parts[-1]] = value
        else:
            raise AssertionError(f'no HF name for {key}')
    for key, value in sd.items():  # layer_scale_parameters [2, C] = (gamma1, gamma2)
        if key.endswith('.gamma1'):
            p = key.split('.')
            hf[f'encoder.levels.{p[1]}.layers.{p[3]}.layer_scale_parameters'] = torch.stack(
                [value, sd[key[:-1] + '2']])
    return {prefix + k if not k.startswith('classifier.') else k: v for k, v in hf.items()}


def test_official_classification_layout_is_kept():
    sd = official_cls_state_dict()
    assert detect_format(sd) == 'official'
    converted, skipped = convert_state_dict(sd)
    assert skipped == [] and converted.keys() == sd.keys()
    assert all(converted[k] is sd[k] for k in sd)


def test_official_det_checkpoint_keeps_backbone_only():
    sd = {'backbone.' + k: v for k, v in official_cls_state_dict().items()
          if not k.startswith(('norm.', 'head.'))}
    sd.update({'module.backbone.norm0.weight': torch.ones(64),  # DDP prefix is stripped too
               'neck.lateral_convs.0.conv.weight': torch.zeros(256, 64, 1, 1),
               'roi_head.bbox_head.fc_cls.weight': torch.zeros(81, 1024)})
    converted, skipped = convert_state_dict(sd, 'official')
    assert sorted(skipped) == ['neck.lateral_convs.0.conv.weight',
                               'roi_head.bbox_head.fc_cls.weight']
    assert 'norm0.weight' in converted and 'levels.2.blocks.5.attn.rpb' in converted
    assert not any(k.startswith('backbone.') for k in converted)


@pytest.mark.parametrize('prefix', ['nat.', 'dinat.', ''])
def test_hf_layout_round_trip(prefix):
    model = NAT(**SMALL).eval()
    model.init_weights()
    for p in model.parameters():  # distinct values everywhere, gammas included
        nn.init.normal_(p, std=0.1)
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith('norm')}
    ours.update({'norm.weight': torch.ones(768), 'norm.bias': torch.zeros(768),
                 'head.weight': torch.zeros(10, 768), 'head.bias': torch.zeros(10)})
    hf = to_hf_layout(ours, prefix)
    assert 'encoder.levels.0.layers.0.layer_scale_parameters' in {k[len(prefix):] for k in hf}
    assert detect_format(hf) == 'hf'
    converted, skipped = convert_state_dict(hf)
    assert skipped == [] and converted.keys() == ours.keys()
    for key, value in ours.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)


def test_hf_backbone_output_norms_become_norm_i():
    hf = {'embeddings.norm.weight': torch.ones(64),
          'hidden_states_norms.stage1.weight': torch.full((64,), 2.),
          'hidden_states_norms.stage4.bias': torch.full((512,), 3.)}
    converted, _ = convert_state_dict(hf)
    assert sorted(converted) == ['norm0.weight', 'norm3.bias', 'patch_embed.norm.weight']
    assert torch.all(converted['norm3.bias'] == 3.)


def test_hf_missing_value_projection_raises():
    hf = {'encoder.levels.0.layers.0.attention.self.query.weight': torch.zeros(4, 4),
          'encoder.levels.0.layers.0.attention.self.key.weight': torch.zeros(4, 4)}
    with pytest.raises(ValueError, match=r"levels.0.blocks.0.attention.self has no \['value'\]"):
        convert_state_dict(hf)
    with pytest.raises(ValueError, match="fmt must be one of.*got 'timm'"):
        convert_state_dict(hf, fmt='timm')


def test_infer_nat_kwargs():
    kwargs = infer_nat_kwargs(official_cls_state_dict(**NAT_OFFICIAL[('NAT', 'small')]))
    assert kwargs['embed_dims'] == 96 and kwargs['depths'] == [3, 4, 18, 5]
    assert kwargs['num_heads'] == [3, 6, 12, 24] and kwargs['mlp_ratio'] == 2
    assert kwargs['layer_scale'] == 1e-5 and kwargs['kernel_size'] == 7


@pytest.mark.parametrize('cls,kwargs,expected_type', [
    (models.NAT, dict(arch='small', depths=(1, 2, 1, 1), out_indices=(1, 3)), 'NAT'),
    (models.DiNAT, dict(arch='large', depths=(1, 1, 2, 1), dilations=[[2], [1], [1, 3], [1]],
                        kernel_size=5, qkv_bias=False), 'NAT'),  # dilations: no parameters
    (models.DiNAT_s, dict(arch='tiny', embed_dims=32, depths=(1, 1, 2, 1),
                          num_heads=(1, 2, 4, 8), dilations=[[2], [1], [1, 3], [1]],
                          patch_size=2, in_channels=1), 'DiNAT_s'),
], ids=['NAT', 'DiNAT', 'DiNAT_s'])
def test_infer_backbone_kwargs_rebuilds_either_family(cls, kwargs, expected_type):
    """One inference for both layouts: the class it names, built from the inferred arguments,
    has exactly the source's keys and shapes."""
    with torch.device('meta'):
        source = cls(**kwargs)
    shapes = {k: v.shape for k, v in source.state_dict().items()}
    inferred = infer_backbone_kwargs(source.state_dict())
    assert inferred['type'] == expected_type
    with torch.device('meta'):
        rebuilt = getattr(models, inferred['type'])(**{k: v for k, v in inferred.items()
                                                       if k != 'type'})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert inferred['out_indices'] == list(kwargs.get('out_indices', range(4)))
    # the family names are thin views of it, without 'type'
    thin = infer_nat_kwargs if expected_type == 'NAT' else infer_dinat_s_kwargs
    assert thin(source.state_dict()) == {k: v for k, v in inferred.items() if k != 'type'}
    other = infer_dinat_s_kwargs if expected_type == 'NAT' else infer_nat_kwargs
    with pytest.raises(ValueError, match=f'{other.__name__}: not a'):
        other(source.state_dict())


def test_infer_backbone_kwargs_refuses_other_layouts():
    hf = to_hf_layout(official_cls_state_dict(depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match='infer_backbone_kwargs: neither a NAT/DiNAT'):
        infer_backbone_kwargs(hf)
    assert infer_backbone_kwargs(convert_state_dict(hf)[0])['type'] == 'NAT'


def test_conversion_is_torch_only_and_reexported_by_the_mm_side():
    """nat_mm.mm.checkpoint keeps its names: the moved ones are nat_mm.models.convert's, and
    extract_state_dict / resize_rpb_to_model add the mm errors and logging."""
    for name in ('detect_format', 'convert_state_dict', 'infer_backbone_kwargs',
                 'infer_nat_kwargs', 'infer_dinat_s_kwargs', 'interpolate_rpb', 'FORMATS'):
        assert getattr(mm_checkpoint, name) is getattr(convert, name), name
    for bad, error in (([1], TypeError), ({'meta': {}}, ValueError)):
        with pytest.raises(error, match='expected a checkpoint dict|no state_dict/model'):
            convert.extract_state_dict(bad)
        with pytest.raises(CheckpointContentError) as info:
            mm_checkpoint.extract_state_dict(bad)
        assert isinstance(info.value, error)
    sd = {'state_dict': {'a': torch.zeros(1)}}
    assert mm_checkpoint.extract_state_dict(sd) is convert.extract_state_dict(sd)
    model = models.NAT(arch='mini', depths=(1, 1, 1, 1), kernel_size=5)
    state = {k: v for k, v in model.state_dict().items()}
    state['levels.0.blocks.0.attn.rpb'] = torch.zeros(2, 13, 13)  # a 7x7 table
    logged = []
    assert convert.resize_rpb_to_model(state, model, 'test', log=logged.append) == [
        'levels.0.blocks.0.attn.rpb']
    assert state['levels.0.blocks.0.attn.rpb'].shape == (2, 9, 9)
    assert logged == ["test: interpolated 1 rpb tables (bicubic, 13x13 -> 9x9) to the model's "
                      'kernel size']


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_convert_checkpoint_cli_on_hf_file(tmp_path, capsys, suffix):
    convert_checkpoint = tool_cli('convert_checkpoint')

    model = NAT(**SMALL)
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith('norm')}
    ours.update({'head.weight': torch.zeros(10, 768), 'head.bias': torch.zeros(10)})
    src = tmp_path / f'hf{suffix}'
    if suffix == '.pth':
        torch.save({'model': to_hf_layout(ours)}, src)
    else:
        safetensors_torch = pytest.importorskip('safetensors.torch')
        safetensors_torch.save_file(to_hf_layout(ours), str(src))
    convert_checkpoint.main([str(src), str(tmp_path / 'out.pth')])
    printed = capsys.readouterr().out
    assert 'format: hf' in printed
    missing = [f'norm{i}.{p}' for i in range(4) for p in ('bias', 'weight')]
    assert f'missing keys (8): {missing}' in printed
    assert "unexpected keys (2): ['head.bias', 'head.weight']" in printed
    saved = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    for key, value in ours.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('fmt', [None, 'official'], ids=['auto', 'format-official'])
def test_convert_checkpoint_cli_on_official_det_file(tmp_path, capsys, fmt):
    """An official mmdet 2.x checkpoint (backbone.* plus neck and heads, DDP prefix) through
    the CLI: the backbone kept with every value, the rest skipped, nothing missing."""
    convert_checkpoint = tool_cli('convert_checkpoint')

    source = NAT(**SMALL)
    for p in source.parameters():
        nn.init.normal_(p)
    det = {'module.backbone.' + k: v for k, v in source.state_dict().items()}
    det.update({'module.neck.fpn_convs.0.conv.weight': torch.zeros(256, 256, 3, 3),
                'module.rpn_head.rpn_cls.weight': torch.zeros(3, 256, 1, 1)})
    torch.save({'meta': {'epoch': 36}, 'state_dict': det}, tmp_path / 'det.pth')
    argv = [str(tmp_path / 'det.pth'), str(tmp_path / 'out.pth')]
    convert_checkpoint.main(argv + (['--format', fmt] if fmt else []))
    printed = capsys.readouterr().out
    assert 'format: official' in printed
    assert 'skipped 2 non-backbone keys (neck/heads)' in printed
    assert 'missing keys (0): []' in printed and 'unexpected keys (0): []' in printed
    saved = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    assert saved.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(saved[key], value), key


def test_convert_checkpoint_cli_format_hf(tmp_path, capsys):
    """--format hf converts an HF file (every value kept); an unknown --format is refused."""
    convert_checkpoint = tool_cli('convert_checkpoint')

    source = NAT(**SMALL)
    for p in source.parameters():
        nn.init.normal_(p)
    ours = dict(source.state_dict())
    torch.save(to_hf_layout(ours, prefix='nat.'), tmp_path / 'hf.bin')
    convert_checkpoint.main([str(tmp_path / 'hf.bin'), str(tmp_path / 'out.pth'), '--format',
                             'hf'])
    assert 'format: hf' in capsys.readouterr().out
    saved = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    for key, value in ours.items():
        assert torch.equal(saved[key], value), key
    with pytest.raises(SystemExit):
        convert_checkpoint.main([str(tmp_path / 'hf.bin'), str(tmp_path / 'x.pth'), '--format',
                                 'timm'])
    assert "invalid choice: 'timm'" in capsys.readouterr().err


def test_pretrained_init_cfg_loads_official_classification_checkpoint(tmp_path):
    sd = official_cls_state_dict()
    torch.save({'model': sd}, tmp_path / 'nat_mini.pth')
    model = NAT(arch='mini', init_cfg=dict(type='Pretrained',
                                           checkpoint=str(tmp_path / 'nat_mini.pth')))
    model.init_weights()
    assert_backbone_loaded(model, sd)


def test_pretrained_init_cfg_with_prefix_and_hf(tmp_path):
    source = NAT(**SMALL)
    for p in source.parameters():  # norms and gammas too: none equal to a fresh model's
        nn.init.normal_(p, std=0.5)
    det = {'backbone.' + k: v for k, v in source.state_dict().items()}
    det['neck.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': det, 'meta': {}}, tmp_path / 'det.pth')
    torch.save(to_hf_layout(dict(source.state_dict())), tmp_path / 'hf.bin')
    for path, prefix in (('det.pth', 'backbone.'), ('hf.bin', None)):
        model = NAT(**SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / path),
                                           prefix=prefix))
        model.init_weights()
        assert model.state_dict().keys() == source.state_dict().keys()
        for key, value in source.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0,
                                       msg=f'{path}: {key}')


def test_pretrained_missing_backbone_weights_raise(tmp_path):
    sd = official_cls_state_dict()
    del sd['levels.1.blocks.2.attn.qkv.weight']
    torch.save(sd, tmp_path / 'broken.pth')
    model = NAT(arch='mini',
                init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'broken.pth')))
    with pytest.raises(RuntimeError, match=r"missing.*'levels.1.blocks.2.attn.qkv.weight'"):
        model.init_weights()
    with pytest.raises(ValueError, match="starts with 'backbone.'"):
        load_pretrained(model, str(tmp_path / 'broken.pth'), prefix='backbone')


# --- mmengine Runner checkpoints under weights_only=True ---------------------------------------

def test_runner_checkpoint_needs_the_allow_list(runner_checkpoint):
    """Without ``import nat_mm`` torch refuses the checkpoint (so the tests below are not
    vacuous), and what it lacks are data types only: no getattr, thanks to the safe pickling."""
    code = textwrap.dedent(f"""
        import pickle, torch
        path = {str(runner_checkpoint)!r}
        print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
        try:
            torch.load(path, weights_only=True)
        except pickle.UnpicklingError:
            print('refused')
        """)
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    unsafe, verdict = result.stdout.strip().splitlines()[-2:]
    unsafe = ast.literal_eval(unsafe)
    assert verdict == 'refused' and unsafe
    # Whatever names this numpy/mmengine writes, each is one our allow-list holds (by the name
    # torch reports), and none is a callable such as builtins.getattr.
    allowed = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
               for g in nat_mm.mm.safe_globals()}
    assert set(unsafe) <= allowed, set(unsafe) - allowed
    assert not any(name.startswith(('builtins.', 'functools.', 'os.', 'posix.', 'subprocess.'))
                   or name.endswith(('getattr', 'eval', 'exec')) for name in unsafe), unsafe


def test_runner_checkpoint_loads_weights_only_after_import(runner_checkpoint):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import load_checkpoint

    ckpt = torch.load(runner_checkpoint, weights_only=True)  # the explicit and default mode
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'} <= set(ckpt)
    buffers = ckpt['message_hub']['log_scalars']
    assert buffers and all(isinstance(b, HistoryBuffer) for b in buffers.values())
    loss = buffers['train/loss']
    assert len(loss.data[0]) == 2 and loss.statistics('mean') == loss.mean()
    # Nothing in the file lies outside torch's defaults plus our allow-list.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(runner_checkpoint) == []
    assert ckpt['meta']['epoch'] == 1
    # What mmdet's/mmseg's/our tools/test.py do: mmengine's loader, torch's default mode.
    model = nn.Module()
    model.linear = nn.Linear(2, 1)
    load_checkpoint(model, str(runner_checkpoint), map_location='cpu', strict=True)
    torch.testing.assert_close(model.linear.weight, ckpt['state_dict']['linear.weight'])


def _record_start_hook():
    """A hook that records, when training starts (after resuming), where the run stands."""
    from mmengine.hooks import Hook

    class RecordStart(Hook):

        def before_train(self, runner):
            optimizer = runner.optim_wrapper.optimizer
            self.start = dict(epoch=runner.epoch, iter=runner.iter,
                              weights={k: v.clone() for k, v in runner.model.state_dict().items()},
                              optimizer=copy.deepcopy(optimizer.state_dict()),
                              lr=[g['lr'] for g in optimizer.param_groups])

    return RecordStart()


def test_runner_resume_under_weights_only(runner_checkpoint, tmp_path):
    """Resuming (mmengine's loader, torch's default weights_only=True) continues from the saved
    state: weights, AdamW moments and step, learning rate, epoch and iteration."""
    saved = torch.load(runner_checkpoint, weights_only=True)
    hook = _record_start_hook()
    runner = train_toy_runner(tmp_path, max_epochs=2, resume=True,
                                load_from=str(runner_checkpoint), custom_hooks=[hook])
    start = hook.start
    assert (start['epoch'], start['iter']) == (1, 2)  # a fresh run starts at (0, 0)
    assert start['weights'].keys() == saved['state_dict'].keys()
    for key, value in saved['state_dict'].items():
        assert torch.equal(start['weights'][key], value), key
    saved_state = saved['optimizer']['state']
    assert saved_state and start['optimizer']['state'].keys() == saved_state.keys()
    for index, state in saved_state.items():
        assert float(state['step']) == 2.  # two AdamW steps in the first epoch
        for name, value in state.items():
            assert torch.equal(start['optimizer']['state'][index][name], value), name
    # the learning rate after the LinearLR warm-up (a fresh run starts at 1e-3 * 0.001)
    assert start['lr'] == [g['lr'] for g in saved['optimizer']['param_groups']]
    assert start['lr'] == [pytest.approx(1e-3)]
    # ... and it trained one more epoch from there
    assert runner.epoch == 2 and runner.iter == 4
    steps = {float(s['step']) for s in runner.optim_wrapper.optimizer.state.values()}
    assert steps == {4.}


def test_allow_list_refuses_callables(tmp_path):
    names = {getattr(g[0] if isinstance(g, tuple) else g, '__name__', '')
             for g in nat_mm.mm.safe_globals()}
    assert not names & {'getattr', 'eval', 'exec', 'system', 'partial', 'apply', '__import__'}
    import os
    torch.save({'state_dict': {}, 'hook': os.getcwd}, tmp_path / 'evil.pth')
    with pytest.raises(pickle.UnpicklingError, match='getcwd'):
        torch.load(tmp_path / 'evil.pth', weights_only=True)

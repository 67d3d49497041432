"""Checkpoint conversion and pretrained loading for the NAT/DiNAT backbones.

Three source layouts are understood:

- ``'official'``: the SHI-Labs classification checkpoints (our exact names plus ``norm.*`` and
  ``head.*``) and their mmdet 2.x / mmseg 0.x detection and segmentation checkpoints (the same
  names under ``backbone.``, next to neck and head weights);
- ``'hf'``: Hugging Face ``NatModel`` / ``DinatModel`` state dicts (also with the ``nat.`` /
  ``dinat.`` prefix of the ``*ForImageClassification`` models, and ``NatBackbone`` /
  ``DinatBackbone``): separate ``query``/``key``/``value`` projections, ``layer_scale_parameters``
  ``[2, C]``, ``layernorm_before`` and so on;
- our own layout, which is the official one (so it converts to itself).

:func:`convert_state_dict` is the one converter; :func:`load_pretrained` (used by ``init_cfg``)
and ``tools/convert_checkpoint.py`` both call it.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from ..models import NAT, DiNAT_s
from .checkpoint_io import (CheckpointContentError, CheckpointMismatchError,
                            CheckpointNotFoundError, checkpoint_origin, current_origin,
                            describe_checkpoint, describe_source, load_checkpoint_file)

__all__ = [
    'detect_format', 'convert_state_dict', 'extract_state_dict', 'infer_nat_kwargs',
    'infer_dinat_s_kwargs', 'interpolate_rpb', 'resize_rpb_to_model',
    'load_pretrained', 'convert_checkpoint_file'
]

FORMATS = ('auto', 'official', 'hf')

# Keys of an official checkpoint that a backbone does not use: the classification head and the
# final norm in front of it.
_CLS_KEYS = re.compile(r'^(norm|head)\.')
# Output norms norm{i} exist only in downstream checkpoints; classification ones lack them.
_OUTPUT_NORM_KEYS = re.compile(r'^norm\d+\.')

_HF_RENAMES = [
    (re.compile(r'^embeddings\.patch_embeddings\.projection\.'), 'patch_embed.proj.'),
    (re.compile(r'^embeddings\.norm\.'), 'patch_embed.norm.'),
    (re.compile(r'^encoder\.levels\.(\d+)\.downsample\.'), r'levels.\1.downsample.'),
    (re.compile(r'^encoder\.levels\.(\d+)\.layers\.(\d+)\.'), r'levels.\1.blocks.\2.'),
    (re.compile(r'^layernorm\.'), 'norm.'),
    (re.compile(r'^classifier\.'), 'head.'),
]
_HF_LAYER_RENAMES = {
    'layernorm_before': 'norm1',
    'attention.self.rpb': 'attn.rpb',
    'attention.output.dense': 'attn.proj',
    'layernorm_after': 'norm2',
    'intermediate.dense': 'mlp.fc1',
    'output.dense': 'mlp.fc2',
}
_HF_QKV = re.compile(r'^(levels\.\d+\.blocks\.\d+\.)attention\.self\.(query|key|value)\.'
                     r'(weight|bias)$')


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return ``'hf'`` for a Hugging Face NAT/DiNAT state dict, else ``'official'``."""
    for key in state_dict:
        key = re.sub(r'^(module\.)?((di)?nat\.)?', '', key)
        if key.startswith(('embeddings.', 'encoder.levels.', 'hidden_states_norms.')):
            return 'hf'
    return 'official'


def _convert_official(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict, List[str]]:
    if any(k.startswith('backbone.') for k in state_dict):
        # mmdet 2.x / mmseg 0.x checkpoint: keep the backbone, skip the neck and heads.
        kept = OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items()
                           if k.startswith('backbone.'))
        return kept, [k for k in state_dict if not k.startswith('backbone.')]
    return OrderedDict(state_dict), []


def _convert_hf(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict, List[str]]:
    out, qkv = OrderedDict(), {}
    for key, value in state_dict.items():
        key = re.sub(r'^(di)?nat\.', '', key)
        stage = re.match(r'^hidden_states_norms\.stage(\d+)\.(.*)$', key)
        if stage:  # NatBackbone output norms: stage{i+1} -> norm{i}
            key = f'norm{int(stage.group(1)) - 1}.{stage.group(2)}'
        for pattern, repl in _HF_RENAMES:
            key = pattern.sub(repl, key)
        block = re.match(r'^(levels\.\d+\.blocks\.\d+\.)(.*)$', key)
        if block:
            prefix, rest = block.groups()
            if rest == 'layer_scale_parameters':  # [2, C] -> gamma1, gamma2
                out[prefix + 'gamma1'], out[prefix + 'gamma2'] = value[0].clone(), value[1].clone()
                continue
            for old, new in _HF_LAYER_RENAMES.items():
                if rest.startswith(old + '.') or rest == old:
                    key = prefix + new + rest[len(old):]
                    break
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        absent = [p for p in ('query', 'key', 'value') if p not in parts]
        if absent:
            raise ValueError(f'convert_state_dict: {prefix}attention.self has no {absent} '
                             f'{kind} to build attn.qkv.{kind} from')
        # Official qkv rows are ordered [3, heads, head_dim]: q rows, then k, then v.
        out[f'{prefix}attn.qkv.{kind}'] = torch.cat(
            [parts['query'], parts['key'], parts['value']], dim=0)
    return out, []


def convert_state_dict(state_dict: Mapping[str, torch.Tensor],
                       fmt: str = 'auto') -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert a NAT/DiNAT state dict to nat_mm's (= the official) key names.

    Args:
        state_dict (Mapping[str, Tensor]): Source weights; a leading ``module.`` (DDP) is
            stripped.
        fmt (str): ``'official'``, ``'hf'`` or ``'auto'`` (see :func:`detect_format`).
            Defaults to 'auto'.

    Returns:
        tuple[dict, list[str]]: The converted state dict and the source keys that were skipped
        because they are not backbone weights (neck and heads of a det/seg checkpoint).
        Classification ``norm.*``/``head.*`` are kept: loading reports them as unused.

    Raises:
        ValueError: an unknown ``fmt``, or an HF attention missing one of query/key/value.
    """
    if fmt not in FORMATS:
        raise ValueError(f'convert_state_dict: fmt must be one of {FORMATS}, got {fmt!r}')
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state_dict.items())
    if fmt == 'auto':
        fmt = detect_format(state_dict)
    return _convert_hf(state_dict) if fmt == 'hf' else _convert_official(state_dict)


def extract_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """Return the weights of a loaded checkpoint: its ``state_dict`` or ``model`` entry, or the
    checkpoint itself when it is already a flat ``{name: tensor}`` dict.

    Raises:
        CheckpointContentError: (a ``TypeError``) ``checkpoint`` holds no recognisable state
            dict.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointContentError(f'expected a checkpoint dict, got '
                                     f'{type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointContentError(
        'checkpoint has no state_dict/model entry and is not a flat dict of tensors; '
        f'top-level keys: {sorted(map(str, checkpoint))[:10]}')


def infer_nat_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Infer the :class:`~nat_mm.models.NAT` arguments that give ``state_dict``'s shapes.

    Dilations do not change the parameters, so the result builds a NAT whose keys and shapes
    match the ones of a DiNAT checkpoint too.

    Raises:
        ValueError: ``state_dict`` is not in nat_mm layout (no ``patch_embed.proj.1.weight``).
    """
    if 'patch_embed.proj.1.weight' not in state_dict:
        raise ValueError('infer_nat_kwargs: not a NAT state dict in nat_mm layout (no '
                         'patch_embed.proj.1.weight); convert it first')
    embed_dims = state_dict['patch_embed.proj.1.weight'].shape[0]
    blocks = {}
    for key in state_dict:
        match = re.match(r'^levels\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            level, block = int(match.group(1)), int(match.group(2))
            blocks[level] = max(blocks.get(level, 0), block + 1)
    depths = [blocks[i] for i in range(len(blocks))]
    rpb = [state_dict[f'levels.{i}.blocks.0.attn.rpb'] for i in range(len(depths))]
    fc1 = state_dict['levels.0.blocks.0.mlp.fc1.weight']
    out_indices = [i for i in range(len(depths)) if f'norm{i}.weight' in state_dict]
    return dict(
        embed_dims=embed_dims, depths=depths, num_heads=[r.shape[0] for r in rpb],
        kernel_size=(rpb[0].shape[1] + 1) // 2, mlp_ratio=fc1.shape[0] / embed_dims,
        layer_scale=1e-5 if 'levels.0.blocks.0.gamma1' in state_dict else 0,
        qkv_bias='levels.0.blocks.0.attn.qkv.bias' in state_dict,
        out_indices=out_indices or list(range(len(depths))))


def infer_dinat_s_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Infer the :class:`~nat_mm.models.DiNAT_s` arguments that give ``state_dict``'s shapes
    (the official DiNAT_s layout: ``patch_embed.proj`` a single conv, levels under ``layers.``).

    Dilations do not change the parameters; the result has dilation 1 everywhere.

    Raises:
        ValueError: ``state_dict`` is not in the DiNAT_s layout.
    """
    if 'patch_embed.proj.weight' not in state_dict or \
            'layers.0.blocks.0.attn.rpb' not in state_dict:
        raise ValueError('infer_dinat_s_kwargs: not a DiNAT_s state dict (no '
                         'patch_embed.proj.weight / layers.0.blocks.0.attn.rpb)')
    proj = state_dict['patch_embed.proj.weight']  # [C, in_channels, p, p]
    blocks = {}
    for key in state_dict:
        match = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            level, block = int(match.group(1)), int(match.group(2))
            blocks[level] = max(blocks.get(level, 0), block + 1)
    depths = [blocks[i] for i in range(len(blocks))]
    rpb = [state_dict[f'layers.{i}.blocks.0.attn.rpb'] for i in range(len(depths))]
    fc1 = state_dict['layers.0.blocks.0.mlp.fc1.weight']
    out_indices = [i for i in range(len(depths)) if f'norm{i}.weight' in state_dict]
    return dict(
        embed_dims=proj.shape[0], in_channels=proj.shape[1], patch_size=proj.shape[2],
        depths=depths, num_heads=[r.shape[0] for r in rpb],
        kernel_size=(rpb[0].shape[1] + 1) // 2, mlp_ratio=fc1.shape[0] / proj.shape[0],
        dilations=[[1] * d for d in depths],
        qkv_bias='layers.0.blocks.0.attn.qkv.bias' in state_dict,
        out_indices=out_indices or list(range(len(depths))))


def interpolate_rpb(rpb: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Resize a relative positional bias table to another kernel size, bicubically.

    This is how the official 11x11 DiNAT-L checkpoint (``dinat_large_in22k_224_11x11interp``)
    was made from the 7x7 one (the official NAT code says so next to its URL; Swin resizes its
    bias tables the same way): the ``[heads, 2k-1, 2k-1]`` table is treated as a ``heads``-channel
    image and resized with ``F.interpolate(mode='bicubic', align_corners=False)``.

    Args:
        rpb (Tensor): ``[heads, 2k-1, 2k-1]`` table of kernel size ``k``.
        kernel_size (int): The new (odd) kernel size ``k'``.

    Returns:
        Tensor: ``[heads, 2k'-1, 2k'-1]``, same dtype; ``rpb`` itself when the size matches.

    Raises:
        ValueError: ``rpb`` is not a square 3-d table of odd side, or ``kernel_size`` < 1.
    """
    if rpb.dim() != 3 or rpb.shape[1] != rpb.shape[2] or rpb.shape[1] % 2 == 0:
        raise ValueError(f'interpolate_rpb: rpb must be [heads, 2k-1, 2k-1], got '
                         f'{tuple(rpb.shape)}')
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f'interpolate_rpb: kernel_size must be an int >= 1, got {kernel_size!r}')
    size = 2 * kernel_size - 1
    if rpb.shape[1] == size:
        return rpb
    resized = F.interpolate(rpb[None].float(), size=(size, size), mode='bicubic',
                            align_corners=False)
    return resized[0].to(rpb.dtype)


def resize_rpb_to_model(state_dict: Dict[str, torch.Tensor], model: nn.Module,
                        source: str = 'resize_rpb_to_model') -> List[str]:
    """Interpolate (in place) every ``*.attn.rpb`` of ``state_dict`` whose table size differs
    from the model's, e.g. a 7x7 checkpoint (13x13 tables) loaded into an 11x11 model.

    Args:
        state_dict (dict): Converted weights, nat_mm names.
        model (nn.Module): The backbone they are loaded into.
        source (str): Name for the log message. Defaults to 'resize_rpb_to_model'.

    Returns:
        list[str]: The keys that were resized.

    Raises:
        ValueError: a table whose number of heads differs from the model's.
    """
    own = model.state_dict()
    resized, sizes = [], set()
    for key, value in state_dict.items():
        if not key.endswith('attn.rpb') or key not in own or own[key].shape == value.shape:
            continue
        target = own[key].shape
        if value.dim() != 3 or value.shape[0] != target[0]:
            raise ValueError(f'{source}: {key} has shape {tuple(value.shape)}, the model needs '
                             f'{tuple(target)}; only the kernel size can differ')
        state_dict[key] = interpolate_rpb(value, (target[1] + 1) // 2)
        resized.append(key)
        sizes.add(f'{value.shape[1]}x{value.shape[2]} -> {target[1]}x{target[2]}')
    if resized:
        print_log(f'{source}: interpolated {len(resized)} rpb tables (bicubic, '
                  f'{", ".join(sorted(sizes))}) to the model\'s kernel size', logger='current')
    return resized


def _fix_hint(origin: Optional[str]) -> str:
    """What to do about a checkpoint that does not fit the backbone, by who set it."""
    if origin and 'pretrained' in origin:
        return (' mmseg hands model.pretrained to the backbone, and a base config (e.g. an mmseg '
                'ResNet one) may set it: set model.pretrained=None, and give NAT/DiNAT weights '
                'in model.backbone.init_cfg.')
    where = f' {origin}' if origin else ' the checkpoint'
    return (f' Point{where} at a NAT/DiNAT checkpoint of this arch (the configs name the '
            'official URLs), or convert one with tools/convert_checkpoint.py.')


def _check_shapes(model: nn.Module, state_dict: Mapping, original: Mapping, source: str) -> None:
    """Raise when weights of ``state_dict`` have another shape than the model's."""
    own = model.state_dict()
    shapes = [f'{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}'
              for k, v in state_dict.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if shapes:
        raise CheckpointMismatchError(
            f'{describe_source(source)}: the checkpoint does not fit the '
            f'{type(model).__name__} backbone: '
            f'{len(shapes)} weights have another shape: {shapes[:10]}'
            f'{" ..." if len(shapes) > 10 else ""}. The checkpoint looks like '
            f'{describe_checkpoint(original)}; is it of another arch?'
            f'{_fix_hint(current_origin())}')


def _check_incompatible(missing: List[str], unexpected: List[str], source: str,
                        model: Optional[nn.Module] = None,
                        state_dict: Optional[Mapping] = None) -> None:
    """Raise on missing backbone weights; log the keys that are expected to differ."""
    new_norms = [k for k in missing if _OUTPUT_NORM_KEYS.match(k)]
    really_missing = [k for k in missing if not _OUTPUT_NORM_KEYS.match(k)]
    if really_missing:
        total = len(model.state_dict()) if model is not None else len(missing)
        shown = really_missing[:20] + (['...'] if len(really_missing) > 20 else [])
        looks = (f' The checkpoint looks like {describe_checkpoint(state_dict)}.'
                 if state_dict is not None else '')
        owner = f' {type(model).__name__}' if model is not None else ''
        raise CheckpointMismatchError(
            f'{describe_source(source)}: the checkpoint does not fit the{owner} backbone: '
            f'{len(really_missing)} of its {total} backbone weights are missing from the '
            f'checkpoint: {shown}.'
            f'{looks}{_fix_hint(current_origin())}')
    if new_norms:
        print_log(f'{source}: output norms not in the checkpoint (a classification '
                  f'checkpoint), initialised as LayerNorm(1, 0): {new_norms}', logger='current')
    cls_keys = [k for k in unexpected if _CLS_KEYS.match(k)]
    others = [k for k in unexpected if not _CLS_KEYS.match(k)]
    if cls_keys:
        print_log(f'{source}: unused classification weights: {cls_keys}', logger='current')
    if others:
        print_log(f'{source}: unexpected keys in the checkpoint: {others}', logger='current',
                  level=30)


def load_pretrained(model: nn.Module,
                    checkpoint: str,
                    prefix: Optional[str] = None,
                    map_location: str = 'cpu',
                    fmt: str = 'auto',
                    origin: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """Load (and convert) a pretrained checkpoint into a NAT/DiNAT backbone.

    The file is read with mmengine's ``CheckpointLoader`` (local paths, URLs, ``open-mmlab://``
    ...). Output norms ``norm{i}`` may be absent (classification checkpoints do not have them;
    they keep their initialisation); any other missing backbone weight is an error. rpb tables
    of another kernel size are interpolated to the model's (:func:`resize_rpb_to_model`).

    Args:
        model (nn.Module): The backbone.
        checkpoint (str): Path or URL.
        prefix (str, optional): Load only the keys under this prefix (e.g. ``'backbone.'``),
            stripped. Defaults to None.
        map_location (str): Passed to the loader. Defaults to 'cpu'.
        fmt (str): Source layout, see :func:`convert_state_dict`. Defaults to 'auto'.
        origin (str, optional): The config key that named ``checkpoint`` (e.g.
            ``'model.backbone.init_cfg.checkpoint'``), for messages. Defaults to None.

    Returns:
        tuple[list[str], list[str]]: Missing and unexpected keys.

    Raises:
        CheckpointContentError: (a ``ValueError``) no key starts with ``prefix``.
        CheckpointMismatchError: (a ``RuntimeError``) backbone weights missing from the
            checkpoint (the message says what the checkpoint looks like).
        CheckpointMismatchError: weights of another shape (another arch).
        CheckpointError: the checkpoint cannot be fetched or read, or is refused
            (:mod:`nat_mm.mm.checkpoint_io`).
    """
    from mmengine.runner import CheckpointLoader

    with checkpoint_origin(origin):
        source = f'load_pretrained({checkpoint})'
        state_dict = extract_state_dict(CheckpointLoader.load_checkpoint(
            checkpoint, map_location=map_location, logger='current'))
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            full = state_dict
            state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                                     if k.startswith(prefix))
            if not state_dict:
                raise CheckpointContentError(
                    f'load_pretrained: no key of {checkpoint} starts with {prefix!r}; it looks '
                    f'like {describe_checkpoint(full)}. Fix init_cfg.prefix (None for a '
                    'backbone-only checkpoint).')
        original = state_dict
        state_dict, _ = convert_state_dict(state_dict, fmt)
        # e.g. the 7x7 ImageNet-22k DiNAT-L checkpoint into the 11x11 model of Mask2Former
        resize_rpb_to_model(state_dict, model, source)
        _check_shapes(model, state_dict, original, source)
        missing, unexpected = nn.Module.load_state_dict(model, state_dict, strict=False)
        _check_incompatible(missing, unexpected, source, model, original)
    return missing, unexpected


def convert_checkpoint_file(src: str, dst: str, fmt: str = 'auto') -> dict:
    """Convert the checkpoint file ``src`` into a nat_mm checkpoint ``dst``.

    ``dst`` holds ``{'state_dict': weights}`` only (tensors, safe for ``weights_only=True``).
    The converted weights are compared with a NAT built from their own shapes
    (:func:`infer_nat_kwargs`), which finds missing, unexpected and misnamed keys.

    Args:
        src (str): Source checkpoint (official, det/seg or Hugging Face; ``.safetensors``
            files are read with safetensors).
        dst (str): Output path.
        fmt (str): ``'auto'``, ``'official'`` or ``'hf'``. Defaults to 'auto'.

    Returns:
        dict: ``format`` (the detected layout), ``missing``, ``unexpected`` and ``skipped``
        (non-backbone keys left out) key lists, and the inferred ``model`` arguments.
    """
    if str(src).endswith('.safetensors'):  # Hugging Face hub files
        from safetensors.torch import load_file
        if not osp.isfile(src):
            raise CheckpointNotFoundError(f'checkpoint not found: {src}')
        state_dict = load_file(str(src))
    else:
        state_dict = extract_state_dict(load_checkpoint_file(src, map_location='cpu'))
    detected = detect_format(state_dict) if fmt == 'auto' else fmt
    converted, skipped = convert_state_dict(state_dict, detected)
    if 'patch_embed.proj.weight' not in converted and \
            'patch_embed.proj.1.weight' not in converted:
        raise CheckpointContentError(
            f'{src} is not a NAT/DiNAT checkpoint ({fmt} layout): it looks like '
            f'{describe_checkpoint(state_dict)}. This converts official, det/seg and Hugging '
            'Face NAT/DiNAT/DiNAT_s checkpoints (--format d2-mask2former: detectron2 '
            'Mask2Former ones).')
    if 'patch_embed.proj.weight' in converted:  # DiNAT_s (Swin layout)
        kwargs = infer_dinat_s_kwargs(converted)
        reference = DiNAT_s(**kwargs, drop_path_rate=0.)
    else:
        kwargs = infer_nat_kwargs(converted)
        reference = NAT(**kwargs, drop_path_rate=0.)
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    torch.save({'state_dict': converted}, dst)
    return dict(format=detected, missing=sorted(missing), unexpected=sorted(unexpected),
                skipped=sorted(skipped), model=kwargs)

"""State-dict key conversion for the NAT/DiNAT/DiNAT_s backbones (torch only).

Three source layouts are understood:

- ``'official'``: the SHI-Labs classification checkpoints (our exact names plus ``norm.*`` and
  ``head.*``) and their mmdet 2.x / mmseg 0.x detection and segmentation checkpoints (the same
  names under ``backbone.``, next to neck and head weights);
- ``'hf'``: Hugging Face ``NatModel`` / ``DinatModel`` state dicts (also with the ``nat.`` /
  ``dinat.`` prefix of the ``*ForImageClassification`` models, and ``NatBackbone`` /
  ``DinatBackbone``): separate ``query``/``key``/``value`` projections, ``layer_scale_parameters``
  ``[2, C]``, ``layernorm_before`` and so on;
- our own layout, which is the official one (so it converts to itself).

:func:`convert_state_dict` is the one converter and :func:`infer_backbone_kwargs` the one
architecture inference; the mmengine side (``init_cfg`` loading, ``tools/convert_checkpoint.py``)
in :mod:`nat_mm.mm.checkpoint` calls them.
"""
import logging
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    'FORMATS', 'detect_format', 'convert_state_dict', 'extract_state_dict',
    'infer_backbone_kwargs', 'infer_nat_kwargs', 'infer_dinat_s_kwargs', 'interpolate_rpb',
    'resize_rpb_to_model'
]

FORMATS = ('auto', 'official', 'hf')

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

# Backbone class -> (the key that identifies its layout, the name of its level container).
_LAYOUTS = {
    'NAT': ('patch_embed.proj.1.weight', 'levels'),  # NAT and DiNAT: a two-conv stem
    'DiNAT_s': ('patch_embed.proj.weight', 'layers'),  # Swin layout: one patch conv
}


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return the layout of a NAT/DiNAT state dict.

    Args:
        state_dict (Mapping[str, Tensor]): Source weights; ``module.``, ``nat.`` and ``dinat.``
            prefixes are ignored.

    Returns:
        str: ``'hf'`` for a Hugging Face NAT/DiNAT state dict, else ``'official'``.
    """
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
    """Return the weights of a loaded checkpoint.

    Args:
        checkpoint (Mapping): What ``torch.load`` returned.

    Returns:
        dict: Its ``state_dict`` or ``model`` entry, or the checkpoint itself when it is
        already a flat ``{name: tensor}`` dict.

    Raises:
        TypeError: ``checkpoint`` is not a dict.
        ValueError: ``checkpoint`` holds no recognisable state dict. (The mmengine-side
            :func:`nat_mm.mm.checkpoint.extract_state_dict` raises both as its
            ``CheckpointContentError``.)
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(
        'checkpoint has no state_dict/model entry and is not a flat dict of tensors; '
        f'top-level keys: {sorted(map(str, checkpoint))[:10]}')


def _layout(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The backbone class whose layout ``state_dict`` has (see ``_LAYOUTS``), or None."""
    for cls_name, (stem_key, levels) in _LAYOUTS.items():
        if stem_key in state_dict and f'{levels}.0.blocks.0.attn.rpb' in state_dict:
            return cls_name
    return None


def infer_backbone_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Infer the backbone class and constructor arguments that give ``state_dict``'s shapes.

    Recognises the NAT layout (``patch_embed.proj.1.weight``, levels under ``levels.``; NAT and
    DiNAT) and the DiNAT_s layout (``patch_embed.proj.weight``, levels under ``layers.``).
    Dilations do not change the parameters, so a DiNAT state dict gives ``type='NAT'``, whose
    keys and shapes match it, and DiNAT_s arguments have dilation 1 everywhere.

    Args:
        state_dict (Mapping[str, Tensor]): Weights in nat_mm (= official) names, e.g. the
            output of :func:`convert_state_dict`.

    Returns:
        dict: ``type`` (``'NAT'`` or ``'DiNAT_s'``) and the arguments of that class:
        ``embed_dims``, ``depths``, ``num_heads``, ``kernel_size``, ``mlp_ratio``,
        ``qkv_bias``, ``out_indices`` (the levels with an output norm, all when there is none),
        plus ``layer_scale`` (1e-5 or 0) for NAT and ``in_channels``, ``patch_size`` and
        ``dilations`` for DiNAT_s. Build with ``MODELS.build(kwargs)`` or
        ``getattr(nat_mm.models, kwargs.pop('type'))(**kwargs)``.

    Raises:
        ValueError: ``state_dict`` is in neither layout.

    Example:
        >>> from nat_mm.models import NAT
        >>> infer_backbone_kwargs(NAT(arch='mini').state_dict())['depths']
        [3, 4, 6, 5]
    """
    cls_name = _layout(state_dict)
    if cls_name is None:
        raise ValueError('infer_backbone_kwargs: neither a NAT/DiNAT state dict (no '
                         'patch_embed.proj.1.weight / levels.0.blocks.0.attn.rpb) nor a '
                         'DiNAT_s one (no patch_embed.proj.weight / layers.0.blocks.0.attn.rpb) '
                         'in nat_mm layout; convert it first')
    stem_key, levels = _LAYOUTS[cls_name]
    blocks = {}
    for key in state_dict:
        match = re.match(rf'^{levels}\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            level, block = int(match.group(1)), int(match.group(2))
            blocks[level] = max(blocks.get(level, 0), block + 1)
    depths = [blocks[i] for i in range(len(blocks))]
    rpb = [state_dict[f'{levels}.{i}.blocks.0.attn.rpb'] for i in range(len(depths))]
    first = f'{levels}.0.blocks.0.'
    stem = state_dict[stem_key]  # [C, in_channels or C/2, kh, kw]
    embed_dims = stem.shape[0]
    kwargs = dict(type=cls_name, embed_dims=embed_dims)
    if cls_name == 'DiNAT_s':
        kwargs.update(in_channels=stem.shape[1], patch_size=stem.shape[2])
    kwargs.update(depths=depths, num_heads=[r.shape[0] for r in rpb],
                  kernel_size=(rpb[0].shape[1] + 1) // 2,
                  mlp_ratio=state_dict[first + 'mlp.fc1.weight'].shape[0] / embed_dims)
    if cls_name == 'NAT':
        kwargs.update(layer_scale=1e-5 if first + 'gamma1' in state_dict else 0)
    else:
        kwargs.update(dilations=[[1] * d for d in depths])
    out_indices = [i for i in range(len(depths)) if f'norm{i}.weight' in state_dict]
    kwargs.update(qkv_bias=first + 'attn.qkv.bias' in state_dict,
                  out_indices=out_indices or list(range(len(depths))))
    return kwargs


def _infer_kwargs_of(cls_name: str, state_dict: Mapping[str, torch.Tensor], caller: str,
                     needs: str) -> dict:
    if _layout(state_dict) != cls_name:
        raise ValueError(f'{caller}: not a {cls_name} state dict{needs}')
    kwargs = infer_backbone_kwargs(state_dict)
    del kwargs['type']
    return kwargs


def infer_nat_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """:func:`infer_backbone_kwargs` for the NAT layout, without ``type``: the
    :class:`~nat_mm.models.NAT` arguments that give ``state_dict``'s shapes (those of a DiNAT
    state dict too).

    Raises:
        ValueError: ``state_dict`` is not in the NAT layout.
    """
    return _infer_kwargs_of('NAT', state_dict, 'infer_nat_kwargs',
                            ' in nat_mm layout (no patch_embed.proj.1.weight); convert it first')


def infer_dinat_s_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """:func:`infer_backbone_kwargs` for the DiNAT_s layout, without ``type``: the
    :class:`~nat_mm.models.DiNAT_s` arguments that give ``state_dict``'s shapes, with
    dilation 1 everywhere.

    Raises:
        ValueError: ``state_dict`` is not in the DiNAT_s layout.
    """
    return _infer_kwargs_of('DiNAT_s', state_dict, 'infer_dinat_s_kwargs',
                            ' (no patch_embed.proj.weight / layers.0.blocks.0.attn.rpb)')


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
                        source: str = 'resize_rpb_to_model',
                        log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Interpolate (in place) every ``*.attn.rpb`` of ``state_dict`` whose table size differs
    from the model's, e.g. a 7x7 checkpoint (13x13 tables) loaded into an 11x11 model.

    Args:
        state_dict (dict): Converted weights, nat_mm names.
        model (nn.Module): The backbone they are loaded into.
        source (str): Name for the log message. Defaults to 'resize_rpb_to_model'.
        log (Callable[[str], None], optional): Where the one-line summary goes when tables
            were resized; None means this module's ``logging`` logger at INFO level (the
            mmengine side passes mmengine's current logger). Defaults to None.

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
        (log or logging.getLogger(__name__).info)(
            f'{source}: interpolated {len(resized)} rpb tables (bicubic, '
            f'{", ".join(sorted(sizes))}) to the model\'s kernel size')
    return resized

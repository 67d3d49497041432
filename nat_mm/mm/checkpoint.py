"""Pretrained loading and checkpoint-file conversion for the NAT/DiNAT/DiNAT_s backbones (the
mmengine side).

The key conversion itself is torch-only and lives in :mod:`nat_mm.models.convert`
(:func:`convert_state_dict`, :func:`detect_format`, :func:`infer_backbone_kwargs`,
:func:`interpolate_rpb`, ...); it is re-exported here, so ``from nat_mm.mm.checkpoint import X``
keeps working. This module adds what needs mmengine and :mod:`nat_mm.mm.checkpoint_io`:
:func:`load_pretrained` (used by ``init_cfg``) and :func:`convert_checkpoint_file` (used by
``tools/convert_checkpoint.py``), both calling :func:`convert_state_dict`, with errors that say
what the checkpoint looks like and what to do, and log messages in mmengine's current logger.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from ..models import NAT, DiNAT_s
from ..models import convert as _convert
from ..models.convert import (FORMATS, convert_state_dict, detect_format,  # noqa: F401
                              infer_backbone_kwargs, infer_dinat_s_kwargs, infer_nat_kwargs,
                              interpolate_rpb)
from .checkpoint_io import (CheckpointContentError, CheckpointMismatchError,
                            CheckpointNotFoundError, checkpoint_origin, current_origin,
                            describe_checkpoint, describe_source, load_checkpoint_file)

__all__ = [
    'detect_format', 'convert_state_dict', 'extract_state_dict', 'infer_backbone_kwargs',
    'infer_nat_kwargs', 'infer_dinat_s_kwargs', 'interpolate_rpb', 'resize_rpb_to_model',
    'load_pretrained', 'convert_checkpoint_file'
]

# Keys of an official checkpoint that a backbone does not use: the classification head and the
# final norm in front of it.
_CLS_KEYS = re.compile(r'^(norm|head)\.')
# Output norms norm{i} exist only in downstream checkpoints; classification ones lack them.
_OUTPUT_NORM_KEYS = re.compile(r'^norm\d+\.')

# The backbone classes that infer_backbone_kwargs names.
_BACKBONES = {'NAT': NAT, 'DiNAT_s': DiNAT_s}


def extract_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """Return the weights of a loaded checkpoint: its ``state_dict`` or ``model`` entry, or the
    checkpoint itself when it is already a flat ``{name: tensor}`` dict
    (:func:`nat_mm.models.convert.extract_state_dict`).

    Args:
        checkpoint (Mapping): What the loader returned.

    Returns:
        dict: The state dict.

    Raises:
        CheckpointContentError: (a ``TypeError`` and a ``ValueError``) ``checkpoint`` holds no
            recognisable state dict.
    """
    try:
        return _convert.extract_state_dict(checkpoint)
    except (TypeError, ValueError) as error:
        raise CheckpointContentError(str(error)) from None


def _log_current(message: str) -> None:
    print_log(message, logger='current')


def resize_rpb_to_model(state_dict: Dict[str, torch.Tensor], model: nn.Module,
                        source: str = 'resize_rpb_to_model') -> List[str]:
    """:func:`nat_mm.models.convert.resize_rpb_to_model`, logging to mmengine's current logger:
    interpolate (in place) every ``*.attn.rpb`` of ``state_dict`` whose table size differs from
    the model's, e.g. a 7x7 checkpoint (13x13 tables) loaded into an 11x11 model.

    Args:
        state_dict (dict): Converted weights, nat_mm names.
        model (nn.Module): The backbone they are loaded into.
        source (str): Name for the log message. Defaults to 'resize_rpb_to_model'.

    Returns:
        list[str]: The keys that were resized.

    Raises:
        ValueError: a table whose number of heads differs from the model's.
    """
    return _convert.resize_rpb_to_model(state_dict, model, source, log=_log_current)


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
    The converted weights are compared with a NAT (or DiNAT_s) built from their own shapes
    (:func:`~nat_mm.models.convert.infer_backbone_kwargs`), which finds missing, unexpected
    and misnamed keys.

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
    kwargs = infer_backbone_kwargs(converted)
    reference = _BACKBONES[kwargs.pop('type')](**kwargs, drop_path_rate=0.)
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    torch.save({'state_dict': converted}, dst)
    return dict(format=detected, missing=sorted(missing), unexpected=sorted(unexpected),
                skipped=sorted(skipped), model=kwargs)

"""Convert the official detectron2 Mask2Former DiNAT checkpoints to mmdet / mmseg key names.

The official DiNAT-L Mask2Former checkpoints (SHI-Labs/Neighborhood-Attention-Transformer,
``mask2former/``) are detectron2 state dicts of Mask2Former's ``MaskFormer`` meta-architecture:

- ``backbone.*``: the official ``D2DiNAT`` wrapper, whose module names are the official DiNAT
  ones and therefore already ours (``patch_embed.proj.0``, ``levels.{i}.blocks.{j}.attn.rpb``,
  ``norm{i}``, ...);
- ``sem_seg_head.pixel_decoder.*``: ``MSDeformAttnPixelDecoder`` (``input_proj.{i}`` =
  Conv2d 1x1 + GroupNorm, coarsest level first; ``transformer.level_embed`` (an
  ``nn.Parameter``); ``transformer.encoder.layers.{j}`` with ``self_attn`` (MSDeformAttn),
  ``norm1``, ``linear1``, ``linear2``, ``norm2``; the FPN part ``adapter_{n}`` /
  ``layer_{n}`` (detectron2 ``Conv2d`` with a ``.norm`` GroupNorm, no bias), numbered from the
  finest level; ``mask_features`` (Conv2d 1x1));
- ``sem_seg_head.predictor.*``: ``MultiScaleMaskedTransformerDecoder``
  (``transformer_{self,cross}_attention_layers.{i}.{self_attn,multihead_attn}``, each an
  ``nn.MultiheadAttention``, + ``.norm``; ``transformer_ffn_layers.{i}.{linear1,linear2,norm}``;
  ``decoder_norm``;
  ``query_feat`` / ``query_embed`` / ``level_embed`` (``nn.Embedding``), ``class_embed``,
  ``mask_embed.layers.{0,1,2}``, and ``input_proj.{i}`` only where a level's channels differ
  from the decoder's);
- ``criterion.empty_weight`` (the no-object class weight, a buffer): no counterpart in mmdet,
  whose ``loss_cls.class_weight`` config holds it.

mmdet's ``Mask2FormerHead`` (``panoptic_head`` in mmdet, ``decode_head`` in mmseg, which reuses
mmdet's class) holds the same tensors with the same shapes under other names: the decoder layer
runs cross-attention, self-attention, FFN, with ``norms.0/1/2`` after each (detectron2's order),
mmcv's ``MultiheadAttention`` wraps ``nn.MultiheadAttention`` as ``.attn``, mmcv's FFN is
``layers.0.0`` / ``layers.1``, ``mask_embed`` is an ``nn.Sequential`` with ReLUs at odd indices,
and the pixel decoder's FPN convs are ``ConvModule``s (``.conv`` / ``.gn``) listed coarsest
first. No tensor needs reshaping (both sides use Conv2d for the 1x1 projections and
``[levels, C]`` level embeddings). The class order is the same on both sides for COCO (80
things, then 53 stuff), ADE20K and Cityscapes, so ``class_embed`` is copied as is.

Not verified on the real files (none could be downloaded here): the names come from the official
and Mask2Former code, and the test builds a state dict with exactly those names and shapes.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch

from .checkpoint_io import CheckpointContentError, describe_checkpoint, load_checkpoint_file

__all__ = ['convert_d2_mask2former', 'convert_d2_mask2former_file', 'D2_HEADS']

D2_HEADS = ('panoptic_head', 'decode_head')

# (pattern on the key after the sem_seg_head prefix, replacement under `{head}.`)
_RULES: List[Tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    # pixel decoder: input projections, coarsest level first on both sides
    (r'^pixel_decoder\.input_proj\.(\d+)\.0\.(weight|bias)$',
     r'pixel_decoder.input_convs.\1.conv.\2'),
    (r'^pixel_decoder\.input_proj\.(\d+)\.1\.(weight|bias)$',
     r'pixel_decoder.input_convs.\1.gn.\2'),
    (r'^pixel_decoder\.transformer\.level_embed$', r'pixel_decoder.level_encoding.weight'),
    (r'^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\.'
     r'(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)$',
     r'pixel_decoder.encoder.layers.\1.self_attn.\2.\3'),
    (r'^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)$',
     r'pixel_decoder.encoder.layers.\1.norms.0.\2'),
    (r'^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)$',
     r'pixel_decoder.encoder.layers.\1.norms.1.\2'),
    (r'^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear1\.(weight|bias)$',
     r'pixel_decoder.encoder.layers.\1.ffn.layers.0.0.\2'),
    (r'^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear2\.(weight|bias)$',
     r'pixel_decoder.encoder.layers.\1.ffn.layers.1.\2'),
    (r'^pixel_decoder\.mask_features\.(weight|bias)$', r'pixel_decoder.mask_feature.\1'),
    # transformer decoder (predictor)
    (r'^predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)$',
     r'transformer_decoder.layers.\1.cross_attn.attn.\2'),
    (r'^predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)$',
     r'transformer_decoder.layers.\1.norms.0.\2'),
    (r'^predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.(.+)$',
     r'transformer_decoder.layers.\1.self_attn.attn.\2'),
    (r'^predictor\.transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)$',
     r'transformer_decoder.layers.\1.norms.1.\2'),
    (r'^predictor\.transformer_ffn_layers\.(\d+)\.linear1\.(weight|bias)$',
     r'transformer_decoder.layers.\1.ffn.layers.0.0.\2'),
    (r'^predictor\.transformer_ffn_layers\.(\d+)\.linear2\.(weight|bias)$',
     r'transformer_decoder.layers.\1.ffn.layers.1.\2'),
    (r'^predictor\.transformer_ffn_layers\.(\d+)\.norm\.(weight|bias)$',
     r'transformer_decoder.layers.\1.norms.2.\2'),
    (r'^predictor\.decoder_norm\.(weight|bias)$', r'transformer_decoder.post_norm.\1'),
    (r'^predictor\.(query_feat|query_embed|level_embed)\.weight$', r'\1.weight'),
    (r'^predictor\.class_embed\.(weight|bias)$', r'cls_embed.\1'),
    (r'^predictor\.input_proj\.(\d+)\.(weight|bias)$', r'decoder_input_projs.\1.\2'),
]]
_MASK_EMBED = re.compile(r'^predictor\.mask_embed\.layers\.(\d+)\.(weight|bias)$')
# FPN part of the pixel decoder: adapter_{n} / layer_{n}, n = 1 for the finest level
_FPN = re.compile(r'^pixel_decoder\.(adapter|layer)_(\d+)\.(norm\.)?(weight|bias)$')


def _to_tensor(value) -> torch.Tensor:
    # detectron2 .pkl files hold numpy arrays
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def convert_d2_mask2former(state_dict: Mapping[str, torch.Tensor],
                           head: str = 'panoptic_head') -> Tuple[Dict[str, torch.Tensor],
                                                                 List[str]]:
    """Rename a detectron2 Mask2Former (DiNAT) state dict to mmdet's / mmseg's Mask2Former.

    Args:
        state_dict (Mapping[str, Tensor]): The detectron2 weights (the checkpoint's ``model``
            entry); numpy arrays are turned into tensors, a leading ``module.`` is stripped.
        head (str): Where the head lives in the target model: ``'panoptic_head'`` (mmdet's
            ``Mask2Former``) or ``'decode_head'`` (mmseg's ``EncoderDecoder``). Defaults to
            'panoptic_head'.

    Returns:
        tuple[dict, list[str]]: The converted state dict, and the source keys that have no
        counterpart (``criterion.empty_weight``, ``pixel_mean``/``pixel_std`` of older
        checkpoints, anything unknown), for the caller to report.

    Raises:
        ValueError: an unknown ``head``.
        CheckpointContentError: (a ``ValueError``) a state dict without ``sem_seg_head.``
            keys.
    """
    if head not in D2_HEADS:
        raise ValueError(f'convert_d2_mask2former: head must be one of {D2_HEADS}, got {head!r}')
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state_dict.items())
    if not any(k.startswith('sem_seg_head.') for k in state_dict):
        raise CheckpointContentError(
            'convert_d2_mask2former: no sem_seg_head.* key; not a detectron2 Mask2Former state '
            f'dict: it looks like {describe_checkpoint(state_dict)} (first keys: '
            f'{list(state_dict)[:5]})')
    fpn_levels = {int(m.group(2)) for m in (_FPN.match(k[len('sem_seg_head.'):])
                                            for k in state_dict) if m}
    num_fpn = max(fpn_levels, default=0)
    out, unused = OrderedDict(), []
    for key, value in state_dict.items():
        value = _to_tensor(value)
        if key.startswith('backbone.'):  # D2DiNAT names = the official DiNAT names = ours
            out[key] = value
            continue
        if not key.startswith('sem_seg_head.'):
            unused.append(key)
            continue
        rest = key[len('sem_seg_head.'):]
        new = None
        for pattern, repl in _RULES:
            if pattern.match(rest):
                new = pattern.sub(repl, rest)
                break
        if new is None and _MASK_EMBED.match(rest):
            layer, kind = _MASK_EMBED.match(rest).groups()
            new = f'mask_embed.{2 * int(layer)}.{kind}'  # ReLUs sit at the odd indices
        if new is None and _FPN.match(rest):
            kind, n, norm, param = _FPN.match(rest).groups()
            # d2 numbers from the finest level (n = 1); mmdet lists the coarsest first
            index = num_fpn - int(n)
            convs = 'lateral_convs' if kind == 'adapter' else 'output_convs'
            new = f'pixel_decoder.{convs}.{index}.{"gn" if norm else "conv"}.{param}'
        if new is None:
            unused.append(key)
            continue
        out[f'{head}.{new}'] = value
    return out, unused


def convert_d2_mask2former_file(src: str, dst: str, head: str = 'panoptic_head') -> dict:
    """Convert a detectron2 Mask2Former checkpoint file into an mmengine one (``state_dict``).

    Args:
        src (str): The detectron2 ``.pth`` file (``{'model': ...}``).
        dst (str): Output path, ``{'state_dict': ...}``, loadable with ``tools/test.py CONFIG
            DST`` for the matching config.
        head (str): ``'panoptic_head'`` (mmdet configs) or ``'decode_head'`` (mmseg configs).
            Defaults to 'panoptic_head'.

    Returns:
        dict: ``format`` ('d2-mask2former'), ``converted`` (number of tensors) and ``unused``
        (source keys without a counterpart).
    """
    from .checkpoint import extract_state_dict

    # Tensors only (weights_only): detectron2's .pkl files are plain pickles, not read here.
    checkpoint = load_checkpoint_file(src, map_location='cpu')
    converted, unused = convert_d2_mask2former(extract_state_dict(checkpoint), head)
    torch.save({'state_dict': converted}, dst)
    return dict(format='d2-mask2former', converted=len(converted), unused=sorted(unused))

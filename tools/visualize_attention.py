"""Draw what neighborhood attention looks at: per-layer attention maps and the receptive field.

For each pixel given with ``--points y,x`` (image coordinates), two PNG figures:

- ``attention_<y>_<x>.png``: one panel per level and layer. The query's token is outlined;
  each of its kh*kw (dilated) neighbours is a cell filled by its attention weight (mean over
  heads), on the image. The weights are the model's own: every NeighborhoodAttention2D runs its
  explicit ``na2d_qk`` (rpb included) + softmax path, and the softmax output is recorded where
  attention dropout would apply (it is not applied). Borders show the window shifting inward;
  DiNAT's dilated layers show spread-out cells.
- ``receptive_field_<y>_<x>.png``: one panel per layer, the image region that can influence the
  query's token after that layer: the neighbourhoods (the ops' own window indices), the 3x3
  stride-2 downsamplers and the stem, composed back to the pixels. NAT's grows by k-1 tokens a
  layer; DiNAT's dilated layers make it jump.

Also writes ``attention.json``: per point, level and layer, the neighbours' positions (in the
level's token grid) and their weights per head.

Example:
    python tools/visualize_attention.py configs/seg/demo_upernet_nat_mini.py \\
        data/demo/images/val/val_000_384.png --checkpoint work_dirs/demo/seg/iter_150.pth \\
        --points 64,64 5,120 --out-dir work_dirs/attention
"""
import argparse
import contextlib
import json
import os.path as osp
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from nat_mm.models import NAT, NeighborhoodAttention2D
from nat_mm.ops._torch_impl import window_indices

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import task_of  # noqa: E402
from _models import load_model, registry_of  # noqa: E402
from nat_mm.mm.cli import (DictAction, InputValueError, ModelTypeError, load_config,  # noqa: E402
                           positive_int, require_file, require_output_dir, run)


class AttentionRecorder(torch.nn.Module):
    """Stands in for a layer's attention dropout: records the softmax weights, passes them on.

    ``NeighborhoodAttention2D`` takes its explicit ``na2d_qk`` + softmax path when it is in
    training mode with ``attn_drop.p > 0``; ``p`` is set so that it does, and nothing is dropped.
    """

    p = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.weights: Optional[torch.Tensor] = None

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        self.weights = attn.detach()
        return attn


@contextlib.contextmanager
def record_attention(backbone: NAT) -> Iterator[List[Tuple[int, int, NeighborhoodAttention2D,
                                                          AttentionRecorder]]]:
    """Within the block every NA layer of ``backbone`` records its weights; yields
    ``[(level, layer, module, recorder)]`` in forward order."""
    entries = []
    for i, level in enumerate(backbone.levels):
        for j, block in enumerate(level.blocks):
            entries.append((i, j, block.attn, block.attn.attn_drop, AttentionRecorder()))
    try:
        for _, _, attn, _, recorder in entries:
            attn.attn_drop = recorder
            attn.training = True  # the module only; its children keep their own mode
        yield [(i, j, attn, recorder) for i, j, attn, _, recorder in entries]
    finally:
        for _, _, attn, dropout, _ in entries:
            attn.attn_drop = dropout
            attn.training = False


def attention_maps(backbone: NAT, inputs: torch.Tensor) -> List[dict]:
    """Run ``backbone`` on ``inputs`` ``[1, 3, H, W]`` and return, per NA layer, its level,
    layer, kernel size, dilation, map size ``(H, W)`` and weights ``[Hp, Wp, heads, kh*kw]``
    (``Hp, Wp``: the map after the padding of small maps)."""
    if not isinstance(backbone, NAT):
        raise ModelTypeError(f'visualize_attention: needs a NAT/DiNAT backbone, got '
                             f'{type(backbone).__name__}')
    sizes = {}
    hooks = [level.register_forward_pre_hook(
        lambda module, args, i=i: sizes.__setitem__(i, tuple(args[0].shape[1:3])))
        for i, level in enumerate(backbone.levels)]
    backbone.eval()  # before recording, which puts the attention modules in training mode
    try:
        with record_attention(backbone) as layers, torch.no_grad():
            backbone(inputs)
            maps = [dict(level=i, layer=j, kernel_size=attn.kernel_size, dilation=attn.dilation,
                         size=sizes[i], weights=rec.weights[0]) for i, j, attn, rec in layers]
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def _axis_windows(length: int, padded: int, kernel: int, dilation: int) -> np.ndarray:
    """Key positions ``[length, k]`` of every query on one axis (the ops' window rule)."""
    keys, _ = window_indices(padded, kernel, dilation, torch.device('cpu'))
    return keys[:length].numpy()


def _window_incidence(length: int, padded: int, kernel: int, dilation: int) -> np.ndarray:
    """``A [length, length]``: A[q, j] = 1 when key j (inside the map) is in query q's window."""
    A = np.zeros((length, padded), np.float32)
    keys = _axis_windows(length, padded, kernel, dilation)
    np.put_along_axis(A, keys, 1.0, axis=1)
    return A[:, :length]


def _conv_incidence(out_len: int, in_len: int) -> np.ndarray:
    """``A [out_len, in_len]`` of a 3x3, stride-2, padding-1 convolution along one axis."""
    A = np.zeros((out_len, in_len), np.float32)
    for p in range(out_len):
        A[p, max(0, 2 * p - 1):min(in_len, 2 * p + 2)] = 1.0
    return A


def receptive_fields(maps: List[dict], image_size: Tuple[int, int],
                     point: Tuple[int, int]) -> List[np.ndarray]:
    """For each NA layer, the boolean ``[H, W]`` image mask of the pixels that can influence
    the token holding ``point`` (pixel y, x) after that layer."""
    stem = [image_size]
    for _ in range(2):
        stem.append(tuple(-(-s // 2) for s in stem[-1]))
    fields = []
    for n, layer in enumerate(maps):
        level = layer['level']
        H, W = layer['size']
        stride = 4 * 2 ** level
        mask = np.zeros((H, W), np.float32)
        mask[min(point[0] // stride, H - 1), min(point[1] // stride, W - 1)] = 1.0
        for prev in reversed(maps[:n + 1]):  # back through the layers, then the downsamplers
            if prev['level'] != level:
                h, w = prev['size']
                mask = _conv_incidence(H, h).T @ mask @ _conv_incidence(W, w)
                level, (H, W) = prev['level'], (h, w)
            Hp, Wp = prev['weights'].shape[:2]
            k, d = prev['kernel_size'], prev['dilation']
            mask = (_window_incidence(H, Hp, k, d).T @ mask @ _window_incidence(W, Wp, k, d))
            mask = (mask > 0).astype(np.float32)
        for (h, w), (H, W) in ((stem[1], stem[2]), (stem[0], stem[1])):  # the stem's two convs
            mask = (_conv_incidence(H, h).T @ mask @ _conv_incidence(W, w) > 0)
            mask = mask.astype(np.float32)
        fields.append(mask > 0)
    return fields


def neighbourhood(layer: dict, point: Tuple[int, int]) -> dict:
    """The query token of ``point`` in ``layer``'s grid, its neighbours and their weights."""
    H, W = layer['size']
    Hp, Wp, heads, _ = layer['weights'].shape
    k, d = layer['kernel_size'], layer['dilation']
    stride = 4 * 2 ** layer['level']
    qy, qx = min(point[0] // stride, H - 1), min(point[1] // stride, W - 1)
    rows = _axis_windows(Hp, Hp, k, d)[qy]
    cols = _axis_windows(Wp, Wp, k, d)[qx]
    weights = layer['weights'][qy, qx].float().reshape(heads, k, k)
    return dict(level=layer['level'], layer=layer['layer'], dilation=d, stride=stride,
                query=[int(qy), int(qx)], rows=rows.tolist(), cols=cols.tolist(),
                weights=weights.numpy())


def _figure_grid(n_rows: int, n_cols: int, panel: float = 2.2):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    return fig, axes


def draw_attention(image: np.ndarray, maps: List[dict], point: Tuple[int, int], out: str,
                   title: str) -> List[dict]:
    """Figure 1 (see the module docstring); returns the neighbourhoods drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    levels = sorted({m['level'] for m in maps})
    depth = max(m['layer'] for m in maps) + 1
    fig, axes = _figure_grid(len(levels), depth)
    cmap = plt.get_cmap('inferno')
    drawn = []
    for layer in maps:
        nb = neighbourhood(layer, point)
        drawn.append(nb)
        ax = axes[levels.index(layer['level']), layer['layer']]
        ax.imshow(image, alpha=0.55)
        mean = nb['weights'].mean(0)
        s = nb['stride']
        for a, r in enumerate(nb['rows']):
            for b, c in enumerate(nb['cols']):
                ax.add_patch(Rectangle((c * s - 0.5, r * s - 0.5), s, s, linewidth=0,
                                       facecolor=cmap(mean[a, b] / mean.max()), alpha=0.75))
        qy, qx = nb['query']
        ax.add_patch(Rectangle((qx * s - 0.5, qy * s - 0.5), s, s, fill=False,
                               edgecolor='cyan', linewidth=1.2))
        ax.plot(point[1], point[0], marker='+', color='cyan', markersize=6)
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.set_title(f'level {layer["level"]} layer {layer["layer"]} d={layer["dilation"]}',
                     fontsize=7)
    fig.suptitle(f'{title}\nattention of pixel (y={point[0]}, x={point[1]}), mean over heads '
                 '(cells: neighbours, colour: weight / max)', fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return drawn


def draw_receptive_field(image: np.ndarray, maps: List[dict], fields: List[np.ndarray],
                         point: Tuple[int, int], out: str, title: str) -> None:
    """Figure 2 (see the module docstring)."""
    import matplotlib.pyplot as plt

    cols = 6
    rows = -(-len(maps) // cols)
    fig, axes = _figure_grid(rows, cols)
    for n, (layer, field) in enumerate(zip(maps, fields)):
        ax = axes.flat[n]
        ax.imshow(image)
        overlay = np.zeros((*field.shape, 4), np.float32)
        overlay[field] = (1.0, 0.85, 0.0, 0.45)
        ax.imshow(overlay)
        ax.plot(point[1], point[0], marker='+', color='cyan', markersize=6)
        cover = 100.0 * field.mean()
        ax.set_title(f'L{layer["level"]}.{layer["layer"]} d={layer["dilation"]}: {cover:.0f}%',
                     fontsize=7)
    fig.suptitle(f'{title}\nreceptive field of pixel (y={point[0]}, x={point[1]}) after each '
                 'layer (% of the image)', fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def read_image(image_path: str, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The image as BGR uint8, resized to ``size`` ``(H, W)`` if given.

    Raises:
        InputNotFoundError: no such file.
        InputValueError: a file OpenCV cannot decode.
    """
    import mmcv

    require_file(image_path, 'image')
    bgr = mmcv.imread(image_path)
    if bgr is None:
        raise InputValueError(f'cannot read the image {image_path}: not an image file OpenCV '
                              'can decode (give a .png, .jpg, .tif ... file)')
    if size is not None:
        bgr = mmcv.imresize(bgr, (size[1], size[0]))
    return bgr


def load_inputs(model, image, size: Optional[Tuple[int, int]] = None):
    """The image (RGB uint8, resized to ``size`` if given) and the model's normalised input;
    ``image`` is a path or a BGR array (:func:`read_image`)."""
    bgr = read_image(image, size) if isinstance(image, str) else image
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    data = model.data_preprocessor(
        dict(inputs=[torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))]), False)
    return rgb, data['inputs'][:, :, :rgb.shape[0], :rgb.shape[1]]


def require_nat_backbone(cfg, config: str) -> None:
    """Raise unless the config's backbone is NAT or DiNAT (or a subclass), before anything is
    built or downloaded.

    Raises:
        ModelTypeError: another backbone (e.g. DiNAT_s, Swin, ResNet) or none.
    """
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    kind = backbone.get('type')
    cls = registry_of(task_of(cfg)).get(kind) if isinstance(kind, str) else kind
    if not (isinstance(cls, type) and issubclass(cls, NAT)):
        raise ModelTypeError(
            f'visualize_attention: the config {config} has a {kind or "missing"} backbone; this '
            'tool draws the neighbourhoods of NAT and DiNAT backbones only (type=\'NAT\' or '
            '\'DiNAT\', e.g. configs/det/mask_rcnn_nat_mini_3x.py)')


def parse_point(text: str) -> Tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a point is y,x in pixels, got {text!r}') from None
    return y, x


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='detection or segmentation config with a NAT/DiNAT '
                        'backbone')
    parser.add_argument('image', help='the image')
    parser.add_argument('--checkpoint', help='checkpoint (default: the config\'s own init)')
    parser.add_argument('--points', type=parse_point, nargs='+', required=True,
                        metavar='Y,X', help='query pixels, e.g. --points 64,64 10,120')
    parser.add_argument('--out-dir', default='work_dirs/attention', help='output directory')
    parser.add_argument('--size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='resize the image first (default: its own size)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, list]:
    args = parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')

    cfg = load_config(args.config, args.cfg_options)
    require_nat_backbone(cfg, args.config)
    bgr = read_image(args.image, args.size)
    require_output_dir(args.out_dir)
    _, model, _ = load_model(cfg, args.checkpoint, origin='--checkpoint')
    image, inputs = load_inputs(model, bgr)
    for y, x in args.points:
        if not (0 <= y < image.shape[0] and 0 <= x < image.shape[1]):
            raise InputValueError(
                f'--points: point ({y}, {x}) is outside the {image.shape[0]}x{image.shape[1]} '
                f'image {args.image}: give y in [0, {image.shape[0] - 1}] and x in '
                f'[0, {image.shape[1] - 1}]')
    maps = attention_maps(model.backbone, inputs)
    weights_note = 'checkpoint ' + osp.basename(args.checkpoint) if args.checkpoint else \
        'no checkpoint: the config\'s random init'
    title = f'{type(model.backbone).__name__} in {osp.basename(args.config)} ({weights_note})'
    written, record = [], []
    for y, x in args.points:
        attention_png = osp.join(args.out_dir, f'attention_{y}_{x}.png')
        field_png = osp.join(args.out_dir, f'receptive_field_{y}_{x}.png')
        drawn = draw_attention(image, maps, (y, x), attention_png, title)
        fields = receptive_fields(maps, image.shape[:2], (y, x))
        draw_receptive_field(image, maps, fields, (y, x), field_png, title)
        written += [attention_png, field_png]
        record.append(dict(point=[y, x], layers=[
            dict({k: v for k, v in nb.items() if k != 'weights'},
                 weights=nb['weights'].reshape(nb['weights'].shape[0], -1).tolist(),
                 receptive_field_fraction=float(field.mean()))
            for nb, field in zip(drawn, fields)]))
    with open(osp.join(args.out_dir, 'attention.json'), 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint, image=args.image,
                       points=record), f)
    print('wrote ' + ', '.join(written))
    return dict(files=written, points=record)


if __name__ == '__main__':
    run(main)

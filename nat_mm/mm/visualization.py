"""Drawings of what neighborhood attention looks at, for tools/visualize_attention.py.

The maths is in :mod:`nat_mm.models.attention` (the recorded weights, the neighbourhoods, the
receptive fields); this module reads the image, runs it through the model's data preprocessor and
draws, with matplotlib (Agg), two figures per query pixel (:func:`draw_point`):

- ``attention_<y>_<x>.png`` (:func:`draw_attention`): one panel per level and layer; the
  query's token is outlined and each of its kh*kw (dilated) neighbours is a cell filled by its
  attention weight (mean over heads), on the image. Borders show the window shifting inward;
  DiNAT's dilated layers show spread-out cells.
- ``receptive_field_<y>_<x>.png`` (:func:`draw_receptive_field`): one panel per layer, the image
  region that can influence the query's token after that layer.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..models import NAT
from ..models.attention import neighbourhood, receptive_fields
from .build import registry_of, task_of
from .cli import InputValueError, ModelTypeError, require_file

__all__ = ['require_nat_backbone', 'read_image', 'load_inputs', 'draw_attention',
           'draw_receptive_field', 'draw_point']


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _figure_grid(n_rows: int, n_cols: int, panel: float = 2.2):
    plt = _pyplot()

    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    return fig, axes


def _save(fig, out: str, suptitle: str) -> None:
    """Title, lay out and write a figure (PNG, 90 dpi), then free it."""
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    _pyplot().close(fig)


def draw_attention(image: np.ndarray, maps: List[dict], point: Tuple[int, int], out: str,
                   title: str) -> List[dict]:
    """``attention_<y>_<x>.png``: one panel per level and layer, the query's token outlined and
    each of its kh*kw (dilated) neighbours a cell filled by its weight (mean over heads), on the
    image; returns the neighbourhoods drawn (:func:`nat_mm.models.attention.neighbourhood`,
    weights as numpy arrays)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    levels = sorted({m['level'] for m in maps})
    depth = max(m['layer'] for m in maps) + 1
    fig, axes = _figure_grid(len(levels), depth)
    cmap = plt.get_cmap('inferno')
    drawn = []
    for layer in maps:
        nb = neighbourhood(layer, point)
        nb['weights'] = nb['weights'].numpy()
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
    _save(fig, out, f'{title}\nattention of pixel (y={point[0]}, x={point[1]}), mean over heads '
          '(cells: neighbours, colour: weight / max)')
    return drawn


def draw_receptive_field(image: np.ndarray, maps: List[dict], fields: List[np.ndarray],
                         point: Tuple[int, int], out: str, title: str) -> None:
    """``receptive_field_<y>_<x>.png``: one panel per layer, the image region that can influence
    the query's token after that layer (``fields``: :func:`nat_mm.models.attention.
    receptive_fields`), with its share of the image."""
    cols = 6
    rows = -(-len(maps) // cols)
    fig, axes = _figure_grid(rows, cols)
    for n, (layer, field) in enumerate(zip(maps, fields)):
        field = np.asarray(field)
        ax = axes.flat[n]
        ax.imshow(image)
        overlay = np.zeros((*field.shape, 4), np.float32)
        overlay[field] = (1.0, 0.85, 0.0, 0.45)
        ax.imshow(overlay)
        ax.plot(point[1], point[0], marker='+', color='cyan', markersize=6)
        cover = 100.0 * field.mean()
        ax.set_title(f'L{layer["level"]}.{layer["layer"]} d={layer["dilation"]}: {cover:.0f}%',
                     fontsize=7)
    _save(fig, out, f'{title}\nreceptive field of pixel (y={point[0]}, x={point[1]}) after each '
          'layer (% of the image)')


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
    """The image (RGB uint8, resized to ``size`` if given) and the model's normalised input
    ``[1, 3, H, W]`` (its data preprocessor, padding cropped); ``image`` is a path or a BGR
    array (:func:`read_image`)."""
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


def draw_point(image: np.ndarray, maps: List[dict], point: Tuple[int, int], out_dir: str,
               title: str) -> Tuple[List[str], dict]:
    """Both figures of one query pixel into ``out_dir``.

    Args:
        image (np.ndarray): The RGB image ``[H, W, 3]``.
        maps (list[dict]): :func:`nat_mm.models.attention.attention_maps` of the image.
        point (tuple[int, int]): The query pixel ``(y, x)``.
        out_dir (str): Where the PNGs go.
        title (str): The figures' first title line.

    Returns:
        tuple[list[str], dict]: The PNGs written, and the point's record: ``point`` and per
        layer its neighbourhood (query, neighbours' rows and columns, weights per head) and
        ``receptive_field_fraction``.
    """
    import os.path as osp

    y, x = point
    attention_png = osp.join(out_dir, f'attention_{y}_{x}.png')
    field_png = osp.join(out_dir, f'receptive_field_{y}_{x}.png')
    drawn = draw_attention(image, maps, (y, x), attention_png, title)
    fields = receptive_fields(maps, image.shape[:2], (y, x))
    draw_receptive_field(image, maps, fields, (y, x), field_png, title)
    record = dict(point=[y, x], layers=[
        dict({k: v for k, v in nb.items() if k != 'weights'},
             weights=nb['weights'].reshape(nb['weights'].shape[0], -1).tolist(),
             receptive_field_fraction=float(field.float().mean()))
        for nb, field in zip(drawn, fields)])
    return [attention_png, field_png], record

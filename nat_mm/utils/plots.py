"""PNG charts of the benchmark JSON files (tools/benchmark_op.py and benchmark_backbone.py,
``--plot``), written beside the JSON: ``foo.json`` -> ``foo.png``. matplotlib (Agg backend),
imported when a chart is drawn.
"""
import json
import os.path as osp
from typing import Callable, List

__all__ = ['png_beside', 'plot_op', 'plot_backbone', 'replot']


def png_beside(json_path: str) -> str:
    """``foo.json`` -> ``foo.png``."""
    return osp.splitext(json_path)[0] + '.png'


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _grouped_bars(ax, groups: List[str], series: dict, ylabel: str, log: bool = False) -> None:
    """Bars per group (x) for each named series; ``None`` values are left out."""
    width = 0.8 / max(len(series), 1)
    for n, (name, values) in enumerate(series.items()):
        xs = [g + (n - (len(series) - 1) / 2) * width for g in range(len(groups))]
        kept = [(x, v) for x, v in zip(xs, values) if v is not None]
        if kept:
            ax.bar([x for x, _ in kept], [v for _, v in kept], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=7, rotation=20, ha='right')
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale('log')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=7)


def plot_op(data: dict, path: str) -> str:
    """benchmark_op.py's rows: median time per layer and backend, forward and forward+backward
    (log scale), and peak memory."""
    plt = _pyplot()
    rows = data['rows']
    layers = list(dict.fromkeys(r['layer'] for r in rows))
    backends = list(dict.fromkeys(r['backend'] for r in rows))
    modes = list(dict.fromkeys(r['mode'] for r in rows))
    fig, axes = plt.subplots(1, len(modes) + 1, figsize=(5 * (len(modes) + 1), 4), squeeze=False)

    def value(layer, mode, backend, key):
        for r in rows:
            if (r['layer'], r['mode'], r['backend']) == (layer, mode, backend):
                return r.get(key)
        return None

    for ax, mode in zip(axes[0], modes):
        _grouped_bars(ax, layers, {b: [value(layer, mode, b, 'median_ms') for layer in layers]
                                   for b in backends}, 'median ms (log)', log=True)
        ax.set_title(f'na2d {mode}', fontsize=9)
    _grouped_bars(axes[0][-1], layers,
                  {b: [value(layer, modes[-1], b, 'peak_mb') for layer in layers]
                   for b in backends}, 'peak MB (log)', log=True)
    axes[0][-1].set_title(f'peak memory, {modes[-1]}', fontsize=9)
    fig.suptitle(data.get('header', '').lstrip('# '), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_backbone(data: dict, path: str) -> str:
    """benchmark_backbone.py's results: median time and peak memory per model and mode."""
    plt = _pyplot()
    results = data['results']
    models = list(dict.fromkeys(r['model'] for r in results))
    modes = list(dict.fromkeys(r['mode'] for r in results))

    def value(model, mode, key):
        return next((r[key] for r in results if (r['model'], r['mode']) == (model, mode)), None)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _grouped_bars(axes[0], modes, {m: [value(m, mode, 'median_ms') for mode in modes]
                                   for m in models}, 'median ms')
    axes[0].set_title('time per step', fontsize=9)
    _grouped_bars(axes[1], modes, {m: [value(m, mode, 'peak_mb') for mode in modes]
                                   for m in models}, 'peak MB')
    axes[1].set_title('peak extra memory', fontsize=9)
    env = data.get('env', {})
    shape = 'x'.join(str(s) for s in env.get('shape', []))
    fig.suptitle(f"backbones on {env.get('device', '?')} ({env.get('threads', '?')} threads), "
                 f"{env.get('dtype', '')}, input {env.get('batch', 1)}x3x{shape}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def replot(json_path: str, plot: Callable[[dict, str], str]) -> str:
    """Draw the chart of a saved JSON beside it with ``plot`` (:func:`plot_op` or
    :func:`plot_backbone`); returns the PNG's path."""
    with open(json_path) as f:
        return plot(json.load(f), png_beside(json_path))

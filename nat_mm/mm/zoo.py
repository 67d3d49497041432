"""The model zoo's one source of numbers: ``configs/metafile.yml``.

The metafile is written in mmdet's format (``Collections`` with ``Name``, ``Metadata``,
``Paper``, ``README``, ``Code``; ``Models`` with ``Name``, ``In Collection``, ``Config``,
``Metadata``, ``Results``, ``Weights``) and imported by the repository's ``model-index.yml``, so
openmim's loader (the ``model-index`` package, ``modelindex.load('model-index.yml')``) reads it.
Each model holds two kinds of numbers, kept apart by their keys:

- ours, measured here and written by ``tools/make_zoo.py``: ``Metadata.Parameters`` (the exact
  parameter count of the model the config builds), ``Metadata.FLOPs`` (``tools/get_flops.py`` at
  ``Metadata.FLOPs Input Size``, rounded to 0.1 GFLOPs; absent until measured) and the schedule
  (``Epochs`` or ``Iterations``, from the config's ``train_cfg``);
- the NAT/DiNAT papers' (as tabled in SHI-Labs/Neighborhood-Attention-Transformer):
  ``Metadata.Paper Parameters (M)``, ``Metadata.Paper FLOPs (G)``, every ``Results`` entry (the
  official checkpoints' box AP, mask AP, PQ, mIoU, ``mIoU(ms+flip)``) and ``Weights`` (the official
  trained checkpoint).

:func:`load_metafile` gives one :class:`ZooModel` per config for the tests and tools that read
these numbers (:func:`parse_metafile` the same from data already read); :func:`read_metafile`,
:func:`dump_metafile` and :func:`write_metafile` are the raw round trip through which
``tools/make_zoo.py`` updates the measured fields.

Example:
    >>> from nat_mm.mm.zoo import load_metafile
    >>> zoo = load_metafile()  # doctest: +SKIP
    >>> zoo['det/mask_rcnn_nat_tiny_3x.py'].paper_params_m  # doctest: +SKIP
    48
"""
import copy
import glob
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import yaml

__all__ = ['ROOT', 'METAFILE', 'MODEL_INDEX', 'PARAMETERS', 'FLOPS', 'FLOPS_INPUT_SIZE',
           'PAPER_PARAMETERS', 'PAPER_FLOPS', 'ZooModel', 'list_configs', 'config_of',
           'read_metafile', 'parse_metafile', 'load_metafile', 'find_model', 'dump_metafile',
           'write_metafile', 'round_flops']

#: The repository root (the metafile ships with the repository's configs, not in the wheel).
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METAFILE = osp.join(ROOT, 'configs', 'metafile.yml')
MODEL_INDEX = osp.join(ROOT, 'model-index.yml')

# Metadata keys. The first three are ours (measured), the last two the papers'.
PARAMETERS = 'Parameters'
FLOPS = 'FLOPs'
FLOPS_INPUT_SIZE = 'FLOPs Input Size'
PAPER_PARAMETERS = 'Paper Parameters (M)'
PAPER_FLOPS = 'Paper FLOPs (G)'

# The order make_zoo writes the keys in (other keys follow in the order they come).
_COLLECTION_KEYS = ('Name', 'Metadata', 'Paper', 'README', 'Code')
_MODEL_KEYS = ('Name', 'In Collection', 'Config', 'Metadata', 'Results', 'Weights')
_METADATA_KEYS = ('Training Data', 'Training Techniques', 'Epochs', 'Iterations', 'Architecture',
                  PARAMETERS, FLOPS, FLOPS_INPUT_SIZE, PAPER_PARAMETERS, PAPER_FLOPS)
_RESULT_KEYS = ('Task', 'Dataset', 'Metrics')

HEADER = """\
# The model zoo in mmdet's metafile format, imported by ../model-index.yml (openmim reads it with
# modelindex.load). configs/README.md is generated from it by tools/make_zoo.py; see its header
# for what each field holds. In short: Metadata.Parameters, Metadata.FLOPs (at FLOPs Input Size,
# HxW as given to tools/get_flops.py --shape) and Epochs/Iterations are ours, written by
# tools/make_zoo.py (FLOPs by --measure-flops); Paper Parameters (M), Paper FLOPs (G), Results
# and Weights are the NAT/DiNAT papers' tables and official checkpoints. Config is relative to
# the repository root (as mim resolves it), README to this file (as model-index checks it).
# tools/make_zoo.py rewrites this file in this layout: edit the papers' fields by hand, then run it.
"""


@dataclass(frozen=True)
class ZooModel:
    """One released config of the metafile.

    Args:
        name (str): ``Name``, the config's file stem.
        config (str): The config relative to ``configs/``, e.g. ``'det/mask_rcnn_nat_tiny_3x.py'``.
        collection (str): ``In Collection``: ``'NAT'`` or ``'DiNAT'`` (DiNAT_s is in DiNAT's).
        params (int, optional): Ours: parameters of the built model; None until make_zoo ran.
        flops (int, optional): Ours: FLOPs at ``flops_shape``; None until measured.
        flops_shape (tuple[int, int]): The ``(H, W)`` of both ours and the paper's FLOPs.
        paper_params_m (int): The paper's parameters, in millions as tabled (rounded).
        paper_flops_g (int): The paper's FLOPs, in GFLOPs as tabled (rounded).
        metrics (dict[str, float]): The paper's results of the official checkpoint, by metric
            (``'box AP'``, ``'mask AP'``, ``'PQ'``, ``'mIoU'``, ``'mIoU(ms+flip)'``).
        results (tuple[tuple[str, str, dict]]): The same as ``(Task, Dataset, Metrics)``.
        weights (str, optional): The official trained checkpoint's URL.
    """
    name: str
    config: str
    collection: str
    params: Optional[int]
    flops: Optional[int]
    flops_shape: Tuple[int, int]
    paper_params_m: int
    paper_flops_g: int
    metrics: Dict[str, float] = field(default_factory=dict)
    results: Tuple[Tuple[str, str, Dict[str, float]], ...] = ()
    weights: Optional[str] = None


def list_configs(root: str = ROOT) -> List[str]:
    """The released configs, relative to ``configs/`` and sorted (``demo_*`` left out)."""
    paths = glob.glob(osp.join(root, 'configs', '*', '*.py'))
    rel = (osp.relpath(p, osp.join(root, 'configs')) for p in paths)
    return sorted(p for p in rel if not osp.basename(p).startswith('demo_'))


def config_of(entry: dict) -> str:
    """A model entry's ``Config`` relative to ``configs/`` (the key of :func:`load_metafile`)."""
    config = entry.get('Config')
    if not isinstance(config, str) or not config.startswith('configs/'):
        raise ValueError(f'metafile: model {entry.get("Name")!r}: Config must be a path under '
                         f'configs/ from the repository root, got {config!r}')
    return config[len('configs/'):]


def read_metafile(path: Optional[str] = None) -> dict:
    """The metafile as parsed YAML (``Collections`` and ``Models`` lists).

    Raises:
        FileNotFoundError: No metafile at ``path`` (it ships with the repository, not the wheel).
        ValueError: The file is not a mapping with a ``Models`` list.
    """
    path = path or METAFILE
    if not osp.isfile(path):
        raise FileNotFoundError(f'no model zoo metafile at {path}: it is configs/metafile.yml of '
                                'the nat_mm repository (not installed with the package)')
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get('Models'), list):
        raise ValueError(f'{path}: expected a mapping with a Models list (mmdet metafile format)')
    return data


def find_model(data: dict, config: str) -> dict:
    """The raw ``Models`` entry of ``config`` (relative to ``configs/``) in ``data``.

    Raises:
        KeyError: No entry has that config.
    """
    for entry in data['Models']:
        if config_of(entry) == config:
            return entry
    raise KeyError(f'configs/metafile.yml has no model with Config: configs/{config}')


def round_flops(flops: float) -> int:
    """FLOPs rounded to 0.1 GFLOPs, as the metafile stores ours."""
    return int(round(flops / 1e8)) * 100_000_000


def _size(text: object, where: str) -> Tuple[int, int]:
    try:
        h, w = str(text).split('x')
        return int(h), int(w)
    except ValueError:
        raise ValueError(f'{where}: {FLOPS_INPUT_SIZE} must be HxW (e.g. 1280x800), '
                         f'got {text!r}') from None


def _model(entry: dict, collections: set, where: str) -> ZooModel:
    name = entry.get('Name')
    where = f'{where}: model {name!r}'
    config = config_of(entry)
    if name != osp.splitext(osp.basename(config))[0]:
        raise ValueError(f'{where}: Name must be the config file stem of {config}')
    if entry.get('In Collection') not in collections:
        raise ValueError(f'{where}: In Collection {entry.get("In Collection")!r} is not one of '
                         f'the Collections {sorted(collections)}')
    meta = entry.get('Metadata') or {}
    missing = [k for k in (FLOPS_INPUT_SIZE, PAPER_PARAMETERS, PAPER_FLOPS) if k not in meta]
    if missing:
        raise ValueError(f'{where}: Metadata lacks {missing}')
    results, metrics = [], {}
    for result in entry.get('Results') or []:
        if not all(result.get(k) for k in _RESULT_KEYS):
            raise ValueError(f'{where}: every Results entry needs {list(_RESULT_KEYS)}, '
                             f'got {result}')
        for metric, value in result['Metrics'].items():
            if metric in metrics:
                raise ValueError(f'{where}: metric {metric!r} appears in two Results')
            metrics[metric] = value
        results.append((result['Task'], result['Dataset'], dict(result['Metrics'])))
    if not results:
        raise ValueError(f'{where}: no Results (the paper\'s metrics)')
    return ZooModel(name=name, config=config, collection=entry['In Collection'],
                    params=meta.get(PARAMETERS), flops=meta.get(FLOPS),
                    flops_shape=_size(meta[FLOPS_INPUT_SIZE], where),
                    paper_params_m=meta[PAPER_PARAMETERS], paper_flops_g=meta[PAPER_FLOPS],
                    metrics=metrics, results=tuple(results), weights=entry.get('Weights'))


def parse_metafile(data: dict, where: str = 'configs/metafile.yml') -> Dict[str, ZooModel]:
    """:func:`load_metafile` of metafile data already read (``where`` names it in errors)."""
    collections = {c.get('Name') for c in data.get('Collections') or []}
    models: Dict[str, ZooModel] = {}
    names = set()
    for entry in data['Models']:
        model = _model(entry, collections, where)
        if model.config in models or model.name in names:
            raise ValueError(f'{where}: two models for {model.config}')
        models[model.config] = model
        names.add(model.name)
    return dict(sorted(models.items()))


def load_metafile(path: Optional[str] = None) -> Dict[str, ZooModel]:
    """One :class:`ZooModel` per config, keyed by the config relative to ``configs/``.

    Args:
        path (str, optional): The metafile. Defaults to the repository's configs/metafile.yml.

    Returns:
        dict[str, ZooModel]: e.g. ``{'det/mask_rcnn_nat_tiny_3x.py': ZooModel(...), ...}``,
        sorted by config.

    Raises:
        FileNotFoundError: No metafile at ``path``.
        ValueError: An entry lacks a field the zoo needs, names an unknown collection, or two
            entries share a config or a name.
    """
    path = path or METAFILE
    return parse_metafile(read_metafile(path), path)


def _ordered(entry: dict, keys: Tuple[str, ...]) -> dict:
    first = {k: entry[k] for k in keys if k in entry}
    return {**first, **{k: v for k, v in entry.items() if k not in first}}


def dump_metafile(data: dict) -> str:
    """The metafile text of ``data``: :data:`HEADER`, then ``Collections`` and ``Models`` with
    their keys in mmdet's order and a blank line between entries. Loading the text gives
    ``data`` back, so dumping a loaded metafile reproduces it."""
    data = copy.deepcopy(data)
    out = {'Collections': [_ordered(c, _COLLECTION_KEYS) for c in data.get('Collections') or []],
           'Models': []}
    for entry in data['Models']:
        entry = _ordered(entry, _MODEL_KEYS)
        if 'Metadata' in entry:
            entry['Metadata'] = _ordered(entry['Metadata'], _METADATA_KEYS)
        entry['Results'] = [_ordered(r, _RESULT_KEYS) for r in entry.get('Results') or []]
        out['Models'].append(entry)
    out.update({k: v for k, v in data.items() if k not in out})
    text = yaml.safe_dump(out, sort_keys=False, default_flow_style=False, width=1000)
    lines = []
    for line in text.splitlines():
        top_entry = line.startswith('- ') and lines and not lines[-1].endswith(':')
        if top_entry or (line[:1].isalpha() and lines):  # a new entry or a new top-level key
            lines.append('')
        lines.append(line)
    return HEADER + '\n' + '\n'.join(lines) + '\n'


def write_metafile(data: dict, path: Optional[str] = None) -> None:
    """Write :func:`dump_metafile` of ``data`` to ``path`` (the repository's by default)."""
    with open(path or METAFILE, 'w') as f:
        f.write(dump_metafile(data))

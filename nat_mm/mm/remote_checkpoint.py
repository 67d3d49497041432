"""Load remote checkpoints (URLs and mmengine's download schemes) with ``weights_only=True``.

mmengine 0.10's ``CheckpointLoader`` reads local files with ``torch.load`` (torch's default,
``weights_only=True`` since torch 2.6), but hands ``http://`` and ``https://`` URLs, and the
aliases that resolve to one (``torchvision://``, ``modelzoo://``, ``open-mmlab://``,
``openmmlab://``, ``mmcls://``), to ``torch.hub.load_state_dict_from_url``, whose
``weights_only`` defaults to False: a checkpoint URL (a config's ``init_cfg``, ``load_from``,
``--resume``, ``tools/test.py CONFIG URL``) could run any code its pickle names.

:func:`register_remote_schemes` (called when ``nat_mm`` is imported) re-registers every remote
scheme mmengine knows, through its own API (``CheckpointLoader.register_scheme(...,
force=True)``), with loaders that do what mmengine's do (torch hub's download cache in
``$TORCH_HOME/hub/checkpoints``, its progress bar, ``map_location``, rank 0 downloading first in
distributed runs) but always pass ``weights_only=True``. The allow-list is the one of local
files (:mod:`nat_mm.mm.serialization`), so checkpoints written by our tools load from a URL as
from a file. ``pavi://`` and ``s3://``/``petrel://`` (which already used torch's default) get the
explicit flag and the same error. A refused checkpoint raises :class:`UnsafeCheckpointError`
naming the source, the reason and what to do; nothing of its pickle is executed.
"""
import io
import logging
import os
import os.path as osp
import pickle
import re
from tempfile import TemporaryDirectory
from typing import Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import print_log
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'UnsafeCheckpointError', 'load_url_weights_only', 'register_remote_schemes',
    'REMOTE_SCHEMES'
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that ``torch.load(weights_only=True)`` refused: it names objects outside
    torch's allow-list plus :func:`nat_mm.mm.serialization.safe_globals`."""


def _refusal_reason(error: Exception) -> str:
    """The specific part of torch's weights-only error, without its boilerplate (and without
    its advice to allow-list the offending global or to turn ``weights_only`` off)."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(error))
    match = re.search(r'WeightsUnpickler error:\s*(.*?)(?:\s*Please use `torch\.serialization'
                      r'|\n\nCheck the documentation|$)', text, re.S)
    if match and match.group(1).strip():
        detail = match.group(1)
    else:
        paragraphs = [p.strip() for p in text.split('\n\n')
                      if p.strip() and not p.strip().startswith(
                          ('Weights only load failed', 'Check the documentation'))]
        detail = ' '.join(paragraphs) or text
    return ' '.join(detail.split())


def _refused(source: str, error: Exception, file: Optional[str] = None,
             downloaded: bool = False) -> UnsafeCheckpointError:
    """The error for a refused checkpoint; ``file`` is its local copy, if one is kept."""
    file = file if file and osp.isfile(file) else None
    copy = (f' The downloaded copy is {file} (delete it to download again).'
            if file and downloaded else '')
    name = file or 'FILE'
    return UnsafeCheckpointError(
        f'refused to load the checkpoint {source}: torch.load(weights_only=True) does not '
        f'accept it ({_refusal_reason(error)}). nat_mm loads every checkpoint, local or remote, '
        'with weights_only=True, because unpickling anything else can run arbitrary code; '
        f'nothing of this file was executed.{copy} If you trust its source, check it (its '
        'publisher, its checksum), list what it needs without running it with '
        f'`torch.serialization.get_unsafe_globals_in_checkpoint({name!r})`, and convert it with '
        f'`python tools/convert_checkpoint.py {name} OUT.pth` (which also loads with '
        'weights_only=True and writes tensors only); then use OUT.pth.')


def _load_file(path: str, map_location, source: str):
    """``torch.load(path, weights_only=True)``, refusals raised as UnsafeCheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refused(source, error, path) from None


def _hub_cache_file(url: str, model_dir: Optional[str]) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url`` (its own naming rule)."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urlparse(url).path))


def load_url_weights_only(url: str,
                          map_location=None,
                          model_dir: Optional[str] = None,
                          progress: Optional[bool] = None,
                          source: Optional[str] = None):
    """Download ``url`` into torch hub's cache (once) and load it with ``weights_only=True``.

    As mmengine's ``load_from_http``: in distributed runs rank 0 downloads first, the other
    ranks read the cached file after a barrier (rank 0 reaches the barrier even when it fails,
    so no rank hangs).

    Args:
        url (str): ``http://`` or ``https://`` URL.
        map_location: Same as :func:`torch.load`. Defaults to None.
        model_dir (str, optional): Download directory. Defaults to None
            (``$TORCH_HOME/hub/checkpoints``).
        progress (bool, optional): Show a download progress bar. Defaults to None (when stdin
            is a terminal, as mmengine).
        source (str, optional): What the user asked for (e.g. ``open-mmlab://name``), for
            messages. Defaults to None (``url``).

    Returns:
        dict: The loaded checkpoint.

    Raises:
        UnsafeCheckpointError: the file holds objects ``weights_only=True`` does not accept.
    """
    if progress is None:
        progress = os.isatty(0)
    source = url if source is None or source == url else f'{source} ({url})'

    def load():
        try:
            return torch.hub.load_state_dict_from_url(
                url, model_dir=model_dir, map_location=map_location, progress=progress,
                weights_only=True)
        except pickle.UnpicklingError as error:
            cached = _hub_cache_file(url, model_dir)
            raise _refused(source, error, cached, downloaded=True) from None

    rank, world_size = get_dist_info()
    checkpoint, failure = None, None
    if rank == 0:
        try:
            checkpoint = load()
        except Exception as error:  # re-raised after the barrier
            failure = error
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load()
    if failure is not None:
        raise failure
    return checkpoint


def load_from_http(filename, map_location=None, model_dir=None):
    """``http://`` and ``https://``: :func:`load_url_weights_only`."""
    return load_url_weights_only(filename, map_location=map_location, model_dir=model_dir)


def load_from_torchvision(filename, map_location=None):
    """``torchvision://NAME`` (and the deprecated ``modelzoo://NAME``): torchvision's URL."""
    if filename.startswith('modelzoo://'):
        print_log('The URL scheme of "modelzoo://" is deprecated, please use '
                  '"torchvision://" instead', logger='current', level=logging.WARNING)
        model_name = filename[len('modelzoo://'):]
    else:
        model_name = filename[len('torchvision://'):]
    model_urls = mm_checkpoint.get_torchvision_models()
    return load_url_weights_only(model_urls[model_name], map_location=map_location,
                                 source=filename)


def load_from_openmmlab(filename, map_location=None):
    """``open-mmlab://NAME`` / ``openmmlab://NAME``: the URL (or the file under mmengine's
    home) that mmengine's ``hub/openmmlab.json`` (plus ``$MMENGINE_HOME/open_mmlab.json``)
    gives."""
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    model_name = filename[len(prefix):]
    deprecated = mm_checkpoint.get_deprecated_model_names()
    if model_name in deprecated:
        print_log(f'{prefix}{model_name} is deprecated in favor of '
                  f'{prefix}{deprecated[model_name]}', logger='current', level=logging.WARNING)
        model_name = deprecated[model_name]
    model_url = mm_checkpoint.get_external_models()[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_url_weights_only(model_url, map_location=map_location, source=filename)
    path = osp.join(mm_checkpoint._get_mmengine_home(), model_url)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    return _load_file(path, map_location, f'{filename} ({path})')


def load_from_mmcls(filename, map_location=None):
    """``mmcls://NAME``: the URL of mmengine's ``hub/mmcls.json``, keeping the backbone."""
    model_url = mm_checkpoint.get_mmcls_models()[filename[len('mmcls://'):]]
    checkpoint = load_url_weights_only(model_url, map_location=map_location, source=filename)
    return mm_checkpoint._process_mmcls_checkpoint(checkpoint)


def load_from_pavi(filename, map_location=None):
    """``pavi://PATH``: downloaded by pavi's modelcloud into a temporary directory."""
    if not filename.startswith('pavi://'):
        raise ValueError(f'load_from_pavi: expected a pavi:// path, got {filename}')
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.') from None
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        try:
            return torch.load(downloaded, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refused(filename, error) from None


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """``s3://`` / ``petrel://`` (optionally ``NAME:s3://``): read through mmengine's
    ``petrel`` file backend."""
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        try:
            return torch.load(buffer, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refused(filename, error) from None


# Every remote prefix of mmengine 0.10's CheckpointLoader, and its weights-only loader.
REMOTE_SCHEMES = {
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    ('mmcls://', ): load_from_mmcls,
    ('pavi://', ): load_from_pavi,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
}


def register_remote_schemes() -> None:
    """Make ``CheckpointLoader`` load every remote scheme with ``weights_only=True``
    (idempotent). Local files keep mmengine's loader: ``torch.load``'s default is already
    ``weights_only=True``."""
    for prefixes, loader in REMOTE_SCHEMES.items():
        CheckpointLoader.register_scheme(list(prefixes), loader, force=True)

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
explicit flag and the same errors. Every download ends in
:func:`nat_mm.mm.checkpoint_io.load_checkpoint_file`, the loader of local files too, so a remote
checkpoint fails the way a local one does: :class:`UnsafeCheckpointError` naming the source, the
refused global and what to do (nothing of its pickle is executed), ``UnreadableCheckpointError``
for a truncated or non-checkpoint download; a URL that cannot be fetched raises
:class:`~nat_mm.mm.checkpoint_io.CheckpointFetchError` naming it (and the config key that set it).
"""
import http.client
import logging
import os
import os.path as osp
import socket
import sys
import urllib.error
import zipfile
from tempfile import TemporaryDirectory
from typing import Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import print_log
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoint_io import (CheckpointFetchError, UnsafeCheckpointError, describe_source,
                            load_checkpoint_file, local_path_hint)

__all__ = [
    'UnsafeCheckpointError', 'load_url_weights_only', 'register_remote_schemes',
    'REMOTE_SCHEMES'
]

# What a failed download raises: no route, DNS, refused, timeouts, HTTP errors, cut streams.
_FETCH_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                 TimeoutError, socket.timeout)


def _fetch_failed(source: str, url: str, error: Exception) -> CheckpointFetchError:
    reason = getattr(error, 'reason', None) if not isinstance(error, urllib.error.HTTPError) \
        else None
    reason = ' '.join(str(reason or error).split()) or type(error).__name__
    name = osp.basename(urlparse(url).path) or 'file.pth'
    return CheckpointFetchError(
        f'could not fetch the checkpoint {describe_source(source)}: {reason}. Check the URL and '
        'the network (or the https_proxy setting), or download the file where the network '
        f'allows and give its local path instead{local_path_hint(name)}.')


def _hub_cache_file(url: str, model_dir: Optional[str]) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url`` (its own naming rule)."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urlparse(url).path))


def _download(url: str, cached: str, progress: bool, source: str) -> None:
    """Download ``url`` into torch hub's cache file ``cached`` unless it is there already
    (torch hub's own download: a partial file is only renamed once complete)."""
    if osp.exists(cached):
        return
    os.makedirs(osp.dirname(cached), exist_ok=True)
    sys.stdout.write(f'Downloading: "{url}" to {cached}\n')
    try:
        torch.hub.download_url_to_file(url, cached, progress=progress)
    except _FETCH_ERRORS as error:
        raise _fetch_failed(source, url, error) from None


def _legacy_zip_member(cached: str, model_dir: str) -> Optional[str]:
    """torch hub's legacy format, a zip holding one checkpoint file: extract it (as
    ``torch.hub.load_state_dict_from_url`` does) and return its path; None otherwise."""
    if not zipfile.is_zipfile(cached):
        return None
    with zipfile.ZipFile(cached) as archive:
        members = archive.infolist()
        if len(members) != 1 or members[0].is_dir():
            return None
        archive.extractall(model_dir)
        return osp.join(model_dir, members[0].filename)


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
        CheckpointFetchError: the download failed.
        UnsafeCheckpointError: the file holds objects ``weights_only=True`` does not accept.
        UnreadableCheckpointError: the download is no (complete) checkpoint.
    """
    if progress is None:
        progress = os.isatty(0)
    source = url if source is None or source == url else f'{source} ({url})'
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = _hub_cache_file(url, model_dir)

    def load():
        _download(url, cached, progress, source)
        path = _legacy_zip_member(cached, model_dir) or cached
        return load_checkpoint_file(path, map_location=map_location, source=source,
                                    downloaded=True)

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
    return load_checkpoint_file(path, map_location, source=f'{filename} ({path})')


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
        return load_checkpoint_file(downloaded, map_location, source=filename)


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """``s3://`` / ``petrel://`` (optionally ``NAME:s3://``): read through mmengine's
    ``petrel`` file backend."""
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with TemporaryDirectory() as tmp_dir:
        local = osp.join(tmp_dir, osp.basename(filename) or 'checkpoint')
        with open(local, 'wb') as f:
            f.write(file_backend.get(filename))
        return load_checkpoint_file(local, map_location, source=filename)


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
    (idempotent). Local files: :func:`nat_mm.mm.checkpoint_io.register_local_scheme`."""
    for prefixes, loader in REMOTE_SCHEMES.items():
        CheckpointLoader.register_scheme(list(prefixes), loader, force=True)

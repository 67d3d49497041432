"""The one loader of every checkpoint nat_mm reads, and the errors it raises.

:func:`load_checkpoint_file` is ``torch.load(path, weights_only=True)`` with errors that say
what is wrong and what to do. Every path goes through it: :func:`register_local_scheme` (called
when ``nat_mm`` is imported) makes it mmengine's ``CheckpointLoader`` loader for local files
(prefix ``''``), so ``Runner`` (``load_from``, ``--resume``, ``tools/test.py CONFIG FILE``),
``mmengine.runner.load_checkpoint``, mmdet's and mmseg's inferencers and ``init_cfg``
``Pretrained`` (:func:`nat_mm.mm.checkpoint.load_pretrained`) use it; the remote schemes of
:mod:`nat_mm.mm.remote_checkpoint` download and then call it; the converters call it directly.

``weights_only`` is never turned off, and torch's message for a refused file, whose first
sentence advises exactly that ("Re-running torch.load with weights_only set to False will
likely succeed"), never reaches the user. Instead:

- :class:`UnsafeCheckpointError`: the pickle names a global outside torch's allow-list plus
  :func:`nat_mm.mm.serialization.safe_globals` (e.g. ``posix.system``); the message names the
  file, the global, and the way out (re-save the tensors from trusted code);
- :class:`UnreadableCheckpointError`: an empty, truncated or damaged file, or one that is no
  ``torch.save`` file at all (an HTML error page, a text file, a plain pickle), with its size;
- :class:`CheckpointNotFoundError`, :class:`CheckpointFetchError` (a URL that could not be
  downloaded), :class:`CheckpointMismatchError` (weights that do not fit the model; see
  :func:`describe_checkpoint`), :class:`CheckpointContentError` (no usable state dict).

All are :class:`nat_mm.mm.cli.UserInputError`: the tools print them as one ``error:`` line.
Messages name the checkpoint and, when a caller said so with :func:`checkpoint_origin`, the
config key or argument that set it (``model.backbone.init_cfg.checkpoint``, ``load_from``).
"""
import contextlib
import contextvars
import os.path as osp
import pickle
import re
import zipfile
from typing import Iterator, Mapping, Optional

import torch

from .cli import InputNotFoundError, UserInputError

__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'UnsafeCheckpointError',
    'UnreadableCheckpointError', 'CheckpointFetchError', 'CheckpointMismatchError',
    'CheckpointContentError', 'checkpoint_origin', 'current_origin', 'describe_source',
    'local_path_hint',
    'load_checkpoint_file', 'load_from_local', 'register_local_scheme', 'describe_checkpoint'
]


class CheckpointError(UserInputError):
    """A checkpoint that cannot be used; the message names it and what to do."""


class CheckpointNotFoundError(CheckpointError, InputNotFoundError):
    """A local checkpoint path that does not exist (or is a directory)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint that ``torch.load(weights_only=True)`` refused: it names objects outside
    torch's allow-list plus :func:`nat_mm.mm.serialization.safe_globals`."""


class UnreadableCheckpointError(CheckpointError, ValueError):
    """An empty, truncated or damaged file, or not a ``torch.save`` file at all."""


class CheckpointFetchError(CheckpointError, OSError):
    """A checkpoint URL that could not be downloaded."""


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """A checkpoint whose weights do not fit the model (missing keys, other shapes)."""


class CheckpointContentError(CheckpointError, TypeError, ValueError):
    """A loaded checkpoint without the weights expected (no state dict, no key under the
    requested prefix)."""


# --- where a checkpoint came from, for messages ------------------------------------------------

_ORIGIN: contextvars.ContextVar = contextvars.ContextVar('nat_mm_checkpoint_origin',
                                                         default=None)


@contextlib.contextmanager
def checkpoint_origin(origin: Optional[str]) -> Iterator[None]:
    """Within the block, checkpoint errors say that ``origin`` set the checkpoint.

    Args:
        origin (str, optional): The config key or argument, e.g. ``'load_from'``,
            ``'model.backbone.init_cfg.checkpoint'``, ``'the CHECKPOINT argument'``. None
            keeps the enclosing one.
    """
    token = _ORIGIN.set(origin or _ORIGIN.get())
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def current_origin() -> Optional[str]:
    """The innermost :func:`checkpoint_origin`, or None."""
    return _ORIGIN.get()


def describe_source(source: str) -> str:
    """``source`` plus ``(set by ORIGIN)`` when an origin is known."""
    origin = _ORIGIN.get()
    return f'{source} (set by {origin})' if origin else str(source)


def local_path_hint(filename: str = 'file.pth') -> str:
    """How to give a local file instead, by the current origin: ``--cfg-options KEY=PATH`` for
    a config key, the argument itself otherwise."""
    origin = _ORIGIN.get()
    key = origin.split(' ')[0] if origin else ''
    if re.fullmatch(r'[A-Za-z_][\w.]*', key) and ('.' in key or key == 'load_from'):
        return f' (e.g. --cfg-options {key}=/path/to/{filename})'
    return f' as {origin}' if origin else ''


# --- what a file is -----------------------------------------------------------------------------

_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER.to_bytes(10, 'little')


def _file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a ``torch.save`` file, or None when it looks like one."""
    with open(path, 'rb') as f:
        head = f.read(64)
    if not head:
        return 'the file is empty'
    if head.startswith(b'PK'):  # torch.save's zip format (torch >= 1.6)
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as error:
            return (f'it is a truncated or damaged zip archive, the format torch.save writes '
                    f'({error})')
        if not any(name == 'data.pkl' or name.endswith('/data.pkl') for name in names):
            return (f'it is a zip archive but not one torch.save wrote (no data.pkl; it holds '
                    f'{names[:3]}{" ..." if len(names) > 3 else ""})')
        return None
    if head.startswith(b'\x80') and _LEGACY_MAGIC in head[:32]:
        return None  # torch.save's legacy format; a truncation shows when loading
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype html', b'<html', b'<?xml')):
        return ('it is an HTML/XML page, not a checkpoint (a download that got a web page '
                'instead of the file?)')
    if len(head) > 10 and head[8:10] == b'{"':
        return ('it looks like a safetensors file (tools/convert_checkpoint.py reads those '
                'when they are named *.safetensors)')
    if head.startswith(b'\x80'):
        return 'it is a plain pickle, not a file written by torch.save'
    return f'it does not start like a file written by torch.save (its first bytes: {head[:16]!r})'


def _unreadable(source: str, path: str, why: str, downloaded: bool) -> UnreadableCheckpointError:
    copy = (f' The downloaded copy is {path}: delete it to download again.' if downloaded
            else '')
    return UnreadableCheckpointError(
        f'cannot load the checkpoint {describe_source(source)} ({osp.getsize(path)} bytes): '
        f'{why}; it is not a PyTorch checkpoint, or not a complete one.{copy} Copy or download '
        'it again (an interrupted transfer leaves such files), or write it again with '
        'torch.save.')


# Sentences of torch's weights-only message that advise turning the check off or allow-listing
# what it refused: never passed on.
_ADVICE = re.compile(r'[^.\n]*(weights_only|safe_globals|Re-running|trusted source|file an issue)'
                     r'[^.\n]*\.?', re.I)


def _refusal_reason(error: Exception) -> str:
    """What torch refused (e.g. ``GLOBAL posix.system``), without its boilerplate and without its
    advice to allow-list the global or to turn ``weights_only`` off."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(error))
    text = re.sub(r'Check the documentation of torch\.load.*', '', text, flags=re.S)
    text = re.sub(r'Weights only load failed\.', '', text)
    text = re.sub(r'WeightsUnpickler error:', '', text)
    text = _ADVICE.sub('', text)
    return ' '.join(text.split()) or 'an object outside the allowed types'


def refused_global(error: Exception) -> Optional[str]:
    """The global that torch's weights-only unpickler refused, e.g. ``'posix.system'``."""
    match = re.search(r'GLOBAL ([\w.]*\w)', str(error))
    return match.group(1) if match else None


def _refused(source: str, error: Exception, path: Optional[str],
             downloaded: bool) -> UnsafeCheckpointError:
    """The error for a checkpoint that ``torch.load(weights_only=True)`` refused."""
    name = refused_global(error)
    what = (f'its pickle names {name}, which is not one of the types a checkpoint may hold'
            if name else f'its pickle holds what a checkpoint may not ({_refusal_reason(error)})')
    copy = (f' The downloaded copy is {path} (delete it to download again).'
            if path and downloaded else '')
    listed = path if path and osp.isfile(path) else 'FILE'
    return UnsafeCheckpointError(
        f'refused to load the checkpoint {describe_source(source)}: {what} (tensors, numbers, '
        'strings, containers and the numpy/mmengine data types nat_mm allows). Unpickling it '
        f'could run arbitrary code, so nothing of it was run.{copy} If you trust where it came '
        'from, re-save just its tensors from trusted code (in the program that wrote it: '
        "torch.save({'state_dict': model.state_dict()}, 'clean.pth')) and load that file; "
        "torch.serialization.get_unsafe_globals_in_checkpoint('" + listed + "') lists what it "
        'names without running it.')


def _stream_error(error: Exception) -> bool:
    """Whether a RuntimeError of torch.load is about the file's bytes (zip reader, storage
    sizes), not about e.g. ``map_location``."""
    return bool(re.search(r'PytorchStreamReader|inline_container|zip archive|corrupt|'
                          r'unexpected EOF|size mismatch for storage', str(error), re.I))


def load_checkpoint_file(path: str, map_location=None, source: Optional[str] = None,
                         downloaded: bool = False):
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong.

    Args:
        path (str): Local file (``~`` is expanded).
        map_location: Same as :func:`torch.load`. Defaults to None.
        source (str, optional): What the user asked for (a URL, ``open-mmlab://name``), for
            messages. Defaults to None (``path``).
        downloaded (bool): ``path`` is a download cache entry (messages say so). Defaults to
            False.

    Returns:
        The loaded object (a checkpoint dict).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist or is a directory.
        UnreadableCheckpointError: empty, truncated or damaged, or not a ``torch.save`` file.
        UnsafeCheckpointError: its pickle names a global outside the allow-list.
    """
    path = osp.expanduser(str(path))
    source = str(source or path)
    if osp.isdir(path):
        raise CheckpointNotFoundError(
            f'checkpoint {describe_source(source)} is a directory, not a file: give a '
            'checkpoint file, e.g. work_dirs/<config>/iter_N.pth')
    if not osp.isfile(path):
        raise CheckpointNotFoundError(
            f'checkpoint not found: {describe_source(source)}. Pass the path of a checkpoint '
            'file (tools/train.py writes work_dirs/<config>/epoch_N.pth or iter_N.pth) or a URL.')
    problem = _file_problem(path)
    if problem:
        raise _unreadable(source, path, problem, downloaded)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if refused_global(error) is None and re.search(r'invalid load key|pickle data was '
                                                       r'truncated', str(error)):
            raise _unreadable(source, path, f'its pickle is damaged ({_refusal_reason(error)})',
                              downloaded) from None
        raise _refused(source, error, path, downloaded) from None
    except EOFError:
        raise _unreadable(source, path, 'it ends early (truncated)', downloaded) from None
    except RuntimeError as error:
        if not _stream_error(error):
            raise
        reason = ' '.join(str(error).split('. ')[0].split())
        raise _unreadable(source, path, f'torch.load cannot read it ({reason})',
                          downloaded) from None


def load_from_local(filename: str, map_location=None):
    """``CheckpointLoader``'s loader for local paths: :func:`load_checkpoint_file`."""
    return load_checkpoint_file(filename, map_location=map_location)


def register_local_scheme() -> None:
    """Make mmengine's ``CheckpointLoader`` read local files with :func:`load_from_local`
    (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme('', load_from_local, force=True)


# --- what a state dict looks like, for mismatch messages --------------------------------------

# (description, pattern that some key matches), first match wins; keys without 'module.'.
_KINDS = [
    ('a detectron2 Mask2Former checkpoint (tools/convert_checkpoint.py --format d2-mask2former '
     'converts it)', r'^sem_seg_head\.'),
    ('a Hugging Face NAT/DiNAT checkpoint', r'^((di)?nat\.)?(embeddings\.patch_embeddings|'
     r'encoder\.levels\.)'),
    ('a NAT/DiNAT checkpoint', r'^levels\.\d+\.blocks\.\d+\.attn\.rpb$'),
    ('a DiNAT_s checkpoint', r'^layers\.\d+\.blocks\.\d+\.attn\.rpb$'),
    ('a Swin Transformer checkpoint', r'relative_position_bias_table$|\.w_msa\.'),
    ('a ConvNeXt checkpoint', r'^downsample_layers\.|\.(dwconv|depthwise_conv)\.'),
    ('a ResNet checkpoint', r'^(conv1|stem\.\d+)\.weight$|^layer[1-4]\.\d+\.conv1\.weight$'),
    ('a ViT checkpoint', r'^(cls_token|pos_embed)$|^blocks\.\d+\.attn\.qkv\.'),
]
_MODEL_PARTS = ('backbone', 'neck', 'rpn_head', 'roi_head', 'bbox_head', 'decode_head',
                'auxiliary_head', 'panoptic_head')


def _kind(keys) -> Optional[str]:
    for description, pattern in _KINDS:
        if any(re.search(pattern, key) for key in keys):
            return description
    return None


def describe_checkpoint(state_dict: Mapping) -> str:
    """What a state dict looks like, from its key names, for error messages.

    >>> describe_checkpoint({'conv1.weight': 0, 'layer1.0.conv1.weight': 0})
    'a ResNet checkpoint (2 keys, e.g. conv1.weight, layer1.0.conv1.weight)'

    Args:
        state_dict (Mapping): The weights (``module.`` prefixes are ignored).

    Returns:
        str: e.g. ``'a ResNet checkpoint (320 keys, e.g. ...)'``, or a whole detector's /
        segmentor's with the kind of its backbone.
    """
    keys = [re.sub(r'^module\.', '', str(k)) for k in state_dict]
    sample = ', '.join(keys[:3]) + (' ...' if len(keys) > 3 else '')
    parts = [p for p in _MODEL_PARTS if any(k.startswith(p + '.') for k in keys)]
    if 'backbone' in parts:
        inner = _kind([k[len('backbone.'):] for k in keys if k.startswith('backbone.')])
        return (f'a whole detector/segmentor checkpoint ({", ".join(parts)}; its backbone '
                f'looks like {inner or "none known"}; {len(keys)} keys)')
    kind = _kind(keys)
    if not keys:
        return 'an empty state dict'
    return f'{kind or "a checkpoint of an unknown layout"} ({len(keys)} keys, e.g. {sample})'

"""Command-line plumbing of ``tools/*.py``: user-input errors and the runner that prints them.

A tool raises :class:`UserInputError` for anything wrong in what the user gave it (a missing or
unreadable config, checkpoint, image or directory, a bad value, a config without what the tool
needs). The typed subclasses are also the builtin exception a caller expects
(:class:`InputNotFoundError` is a ``FileNotFoundError``, :class:`InputValueError` a
``ValueError`` ...), so code calling a tool's ``main()`` or a library function can catch either.

:func:`run` is every tool's ``if __name__ == '__main__'`` line: it calls ``main`` and turns a
``UserInputError`` into one line on stderr, ``<prog>: error: <message>``, and exit status 2, the
shape and status of argparse's ``parser.error``, so that argument errors found by argparse and
input errors found later read alike. Every other exception is a bug (ours or a library's) and
keeps its traceback.

The argparse helpers (:func:`positive_int`, :class:`DictAction`) catch bad values while the
arguments are parsed, with ``parser.error``; :func:`load_config` loads a config and merges
``--cfg-options`` with the same kind of errors.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Optional

from mmengine.config import DictAction as MMDictAction

__all__ = [
    'UserInputError', 'InputNotFoundError', 'InputValueError', 'ConfigError',
    'UnsupportedInputError', 'ModelTypeError', 'run', 'format_error', 'positive_int',
    'DictAction', 'load_config', 'require_file', 'require_output_dir'
]

#: The exit status of a user-input error: argparse's (``parser.error`` exits with 2).
EXIT_USAGE = 2


class UserInputError(Exception):
    """Something wrong in what the user gave a tool; :func:`run` prints its message as one
    ``error:`` line, without a traceback. The message names the input and the fix."""


class InputNotFoundError(UserInputError, FileNotFoundError):
    """A file or directory the user named (config, checkpoint, image, dataset path) is
    missing."""


class InputValueError(UserInputError, ValueError):
    """A bad value: an argument, a ``--cfg-options`` entry, a config setting, a file of the
    wrong kind."""


class ConfigError(UserInputError, RuntimeError):
    """The config (or the launcher's environment) lacks a setting the requested action needs
    (e.g. ``tta_pipeline`` for ``--tta``, ``WORLD_SIZE`` for ``--launcher pytorch``)."""


class UnsupportedInputError(UserInputError, NotImplementedError):
    """A valid combination of inputs that this machine or tool does not support (e.g.
    ``--launcher slurm`` without CUDA)."""


class ModelTypeError(UserInputError, TypeError):
    """The config's model is not of a kind the tool handles (e.g. not a NAT/DiNAT backbone for
    ``tools/visualize_attention.py``)."""


def format_error(error: BaseException, prog: Optional[str] = None) -> str:
    """``<prog>: error: <message>`` on one line (whitespace runs, newlines included, become one
    space), as argparse's ``parser.error`` writes it; a message that starts with the tool's own
    name (``infer: ...`` from tools/infer.py) loses that prefix."""
    prog = prog or osp.basename(sys.argv[0]) or 'nat_mm'
    message = ' '.join(str(error).split()) or type(error).__name__
    stem = osp.splitext(prog)[0]
    if message.startswith(f'{stem}: '):
        message = message[len(stem) + 2:]
    return f'{prog}: error: {message}'


def run(main: Callable[[], object], prog: Optional[str] = None) -> None:
    """Run a tool's ``main()``: return when it succeeds (the interpreter then exits with 0), exit
    with the int ``main`` returns when that is not 0, and with :data:`EXIT_USAGE` after printing
    a :class:`UserInputError` as one line on stderr. Any other exception propagates (its
    traceback is printed by the interpreter).

    Args:
        main (Callable): The tool's ``main``, called without arguments (it parses
            ``sys.argv``).
        prog (str, optional): Program name for the message. Defaults to None
            (``basename(sys.argv[0])``, argparse's default).

    Raises:
        SystemExit: a user-input error (status 2) or a non-zero status from ``main``.
    """
    try:
        result = main()
    except UserInputError as error:
        sys.stdout.flush()
        print(format_error(error, prog), file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        sys.exit(result)


def positive_int(text: str) -> int:
    """argparse ``type=`` for sizes and counts: an int >= 1.

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it with the option's name).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


class DictAction(MMDictAction):
    """mmengine's ``DictAction`` (``--cfg-options KEY=VALUE ...``, values parsed as Python
    literals, ``[a,b]``/``(a,b)`` as lists/tuples) whose bad entries are argparse errors naming
    them, instead of a traceback from inside the parser."""

    def __call__(self, parser, namespace, values, option_string=None):
        option = option_string or self.dest
        for entry in values:
            key, sep, value = entry.partition('=')
            if not sep or not key or any(c.isspace() for c in key):
                parser.error(f'argument {option}: expected KEY=VALUE pairs, got {entry!r} '
                             f'(e.g. {option} train_cfg.max_iters=100 model.backbone.arch=tiny)')
            if value.count('[') != value.count(']') or value.count('(') != value.count(')'):
                parser.error(f'argument {option}: unbalanced brackets in {entry!r} (lists are '
                             "written KEY='[a,b]', quoted for the shell)")
        try:
            super().__call__(parser, namespace, values, option_string)
        except (ValueError, AssertionError, IndexError) as error:
            parser.error(f'argument {option}: cannot parse {list(values)}: {error}')


def require_file(path: str, what: str, hint: str = '') -> str:
    """Return ``path`` if it is a readable file.

    Args:
        path (str): The path the user gave.
        what (str): What it is, for the message (e.g. ``'config'``, ``'image'``).
        hint (str): What to do, appended to the message. Defaults to ''.

    Raises:
        InputNotFoundError: ``path`` does not exist or is a directory.
        InputValueError: ``path`` cannot be read.
    """
    hint = f' {hint}' if hint else ''
    if osp.isdir(path):
        raise InputNotFoundError(f'{what} {path} is a directory, not a file.{hint}')
    if not osp.isfile(path):
        raise InputNotFoundError(f'{what} not found: {path}.{hint}')
    try:
        with open(path, 'rb'):
            pass
    except OSError as error:
        raise InputValueError(f'cannot read the {what} {path}: {error.strerror or error}.'
                              f'{hint}') from None
    return path


def require_output_dir(path: str, what: str = '--out-dir') -> str:
    """Return ``path`` after making sure it is (or can become) a writable directory.

    Raises:
        InputValueError: ``path`` is a file, or the directory cannot be created or written.
    """
    if osp.exists(path) and not osp.isdir(path):
        raise InputValueError(f'{what} {path} is a file, not a directory: give a directory '
                              '(it is created if missing)')
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise InputValueError(f'{what} {path}: cannot create the directory '
                              f'({error.strerror or error}); give a writable directory') from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputValueError(f'{what} {path} is not writable; give a writable directory')
    return path


CONFIG_SUFFIXES = ('.py', '.json', '.yaml', '.yml')


def load_config(path: str, cfg_options: Optional[dict] = None,
                option: str = '--cfg-options'):
    """Load an mmengine config and merge ``cfg_options`` into it, with user-input errors.

    Args:
        path (str): Config file (``.py``, ``.json``, ``.yaml``).
        cfg_options (dict, optional): Parsed ``--cfg-options``. Defaults to None.
        option (str): The option's name for messages. Defaults to '--cfg-options'.

    Returns:
        mmengine.config.Config: The config.

    Raises:
        InputNotFoundError: ``path`` (or one of its ``_base_`` files) does not exist.
        InputValueError: not a config file, a syntax error in it, or options that do not
            merge (e.g. a list index beyond the list).
    """
    from mmengine.config import Config

    hint = 'Give the path of an mmdet/mmseg config, e.g. configs/det/mask_rcnn_nat_tiny_3x.py.'
    require_file(path, 'config', hint)
    if not path.endswith(CONFIG_SUFFIXES):
        raise InputValueError(f'config {path} is not a config file: expected one of '
                              f'{", ".join(CONFIG_SUFFIXES)}. {hint}')
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as error:  # a _base_ file
        raise InputNotFoundError(f'config {path}: {error}; fix its _base_ entries') from None
    except SyntaxError as error:
        raise InputValueError(f'config {path} has a syntax error: '
                              f'{" ".join(str(error).split())}') from None
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            entries = ' '.join(f'{k}={v!r}' for k, v in cfg_options.items())
            raise InputValueError(f'{option} {entries} do not fit the config {path}: '
                                  f'{error}') from None
    return cfg

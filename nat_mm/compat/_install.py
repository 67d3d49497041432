"""Making ``import natten`` give :mod:`nat_mm.compat.natten`, only when asked, and undoing it.

:func:`install_natten` puts the package and each of its submodules into ``sys.modules`` under
``natten`` / ``natten.<sub>`` (what was there is kept aside), and puts a finder first on
``sys.meta_path`` that answers ``importlib.metadata`` for the name ``natten`` (Hugging Face
transformers decides ``is_natten_available()`` from ``importlib.util.find_spec('natten')`` and
``importlib.metadata.version('natten')``, then imports ``natten.functional``). The finder imports
nothing. :func:`uninstall_natten` removes all of it and puts back what was kept aside, so a later
``import natten`` finds whatever is installed. Objects imported while installed keep pointing at
nat_mm's modules.
"""
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Tuple

__all__ = ['install_natten', 'uninstall_natten', 'is_natten_installed']

_PACKAGE = __name__.rpartition('.')[0] + '.natten'  # nat_mm.compat.natten
# Every module of the package, so that none is ever loaded a second time under a natten.* name.
_SUBMODULES = ('_checks', 'context', 'flops', 'functional', 'modules', 'types', 'utils',
               'utils.log')

# The natten entries of sys.modules taken out by install_natten(); None while not installed.
_saved: Optional[Dict[str, ModuleType]] = None


def _is_natten_name(name: str) -> bool:
    return name == 'natten' or name.startswith('natten.')


class _Distribution(importlib.metadata.Distribution):
    """The metadata of nat_mm's natten: a name and a version, no files."""

    def read_text(self, filename: str) -> Optional[str]:
        if filename != 'METADATA':
            return None
        version = sys.modules[_PACKAGE].__version__
        return ('Metadata-Version: 2.1\nName: natten\n'
                f'Version: {version}\n'
                "Summary: nat_mm.compat.natten, NATTEN 0.14-0.17's API on nat_mm's kernels\n")

    def locate_file(self, path) -> Path:
        return Path(sys.modules[_PACKAGE].__file__).parent / path


class _MetadataFinder(importlib.abc.MetaPathFinder):
    """Answers ``importlib.metadata`` lookups of ``natten``; finds no modules."""

    def find_spec(self, fullname, path=None, target=None):
        return None

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        name = getattr(context, 'name', None)
        if name is not None and re.sub(r'[-_.]+', '-', name).lower() == 'natten':
            yield _Distribution()


_finder = _MetadataFinder()


def _real_natten() -> Optional[Tuple[str, str]]:
    """``(version, location)`` of the natten this process would import now, or None."""
    try:
        version = importlib.metadata.version('natten')
    except importlib.metadata.PackageNotFoundError:
        version = 'of unknown version'
    module = sys.modules.get('natten')
    if module is not None:
        location = getattr(module, '__file__', None) or repr(module)
    else:
        try:
            spec = importlib.util.find_spec('natten')
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return None
        location = spec.origin or str(list(spec.submodule_search_locations or []))
    return version, location


def is_natten_installed() -> bool:
    """Whether :func:`install_natten` is in effect."""
    return _saved is not None


def install_natten() -> ModuleType:
    """Make ``import natten`` (and ``natten.functional``, ...) give :mod:`nat_mm.compat.natten`.

    Idempotent. Nothing in nat_mm calls it: ``import nat_mm`` never installs anything. Modules
    that imported another natten before keep theirs. With a real NATTEN installed, a warning says
    which one ``import natten`` now gives.

    Returns:
        module: ``nat_mm.compat.natten``.

    Example:
        >>> import nat_mm.compat
        >>> natten = nat_mm.compat.install_natten()
        >>> from natten.functional import natten2dav, natten2dqkrpb
        >>> nat_mm.compat.uninstall_natten()
        True
    """
    global _saved
    package = importlib.import_module(_PACKAGE)
    ours = {'natten': package}
    ours.update({f'natten.{sub}': importlib.import_module(f'{_PACKAGE}.{sub}')
                 for sub in _SUBMODULES})
    if _saved is not None:  # already installed: make sure the entries are still ours
        sys.modules.update(ours)
        return package
    real = _real_natten()
    saved = {name: module for name, module in sys.modules.items() if _is_natten_name(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(ours)
    sys.meta_path.insert(0, _finder)
    importlib.invalidate_caches()
    _saved = saved
    if real is not None:
        warnings.warn(
            f'nat_mm.compat.install_natten: `import natten` now gives {_PACKAGE} (NATTEN '
            f'0.14-0.17 API on nat_mm kernels, __version__ {package.__version__!r}), not the '
            f'installed natten {real[0]} at {real[1]}; nat_mm.compat.uninstall_natten() gives '
            'that one back.', UserWarning, stacklevel=2)
    return package


def uninstall_natten() -> bool:
    """Undo :func:`install_natten`: a later ``import natten`` finds what is really installed.

    Removes every ``natten`` / ``natten.*`` entry of ``sys.modules`` and the metadata finder,
    and puts back the entries :func:`install_natten` took out.

    Returns:
        bool: True if it was installed, False if there was nothing to undo.
    """
    global _saved
    if _saved is None:
        return False
    for name in [name for name in sys.modules if _is_natten_name(name)]:
        del sys.modules[name]
    sys.modules.update(_saved)
    while _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    importlib.invalidate_caches()
    _saved = None
    return True

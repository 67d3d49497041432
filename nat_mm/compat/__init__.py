"""Compatibility layers for code written against older APIs (torch only).

- :mod:`nat_mm.compat.natten`: NATTEN 0.14-0.17's functional API and modules (with the relative
  positional bias) on nat_mm's kernels.
- :func:`install_natten` / :func:`uninstall_natten`: make ``import natten`` give it, and undo
  that; ``python -m nat_mm.compat.run script.py [args]`` runs a script that way.

Like ``nat_mm.ops`` and ``nat_mm.models``, this imports only torch and nat_mm's own layers, and
importing ``nat_mm`` or ``nat_mm.compat`` installs nothing. See docs/natten_compat.md.
"""
from . import natten
from ._install import install_natten, is_natten_installed, uninstall_natten

__all__ = ['natten', 'install_natten', 'uninstall_natten', 'is_natten_installed']

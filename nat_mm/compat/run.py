"""Run a script written for NATTEN 0.14-0.17 with ``import natten`` giving nat_mm's layer.

Usage::

    python -m nat_mm.compat.run script.py [args ...]
    python -m nat_mm.compat.run -m package.module [args ...]

It calls :func:`nat_mm.compat.install_natten`, then runs the script (or module) as ``__main__``
with ``sys.argv`` set as ``python script.py args`` would set it.
"""
import os
import runpy
import sys
from typing import Optional, Sequence

from ._install import install_natten

USAGE = ('usage: python -m nat_mm.compat.run script.py [args ...]\n'
         '       python -m nat_mm.compat.run -m package.module [args ...]')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Install nat_mm's ``natten`` and run ``argv`` (``sys.argv[1:]`` when None).

    Returns:
        int: 0 once the script has run, 2 for a bad command line (usage on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (['-h'], ['--help']):
        print(USAGE)
        return 0
    if not argv or argv == ['-m']:
        print(USAGE, file=sys.stderr)
        return 2
    install_natten()
    if argv[0] == '-m':
        sys.argv = argv[1:]  # run_module(alter_sys=True) replaces argv[0] by the module's path
        runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python script.py`
        runpy.run_path(argv[0], run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())

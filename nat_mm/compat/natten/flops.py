"""NATTEN 0.14's ``natten.flops`` (fvcore handles): importable, but not provided.

The official NAT/DiNAT ``extras.py`` imports ``add_natten_handle`` for its FLOP-counting tool; so
the import succeeds and the call says what to use instead.
"""

__all__ = ['add_natten_handle']


def add_natten_handle(flop_ctr):
    """NATTEN's fvcore FLOP handles: not provided, raises ``NotImplementedError``."""
    raise NotImplementedError(
        'natten.flops.add_natten_handle: fvcore FLOP handles for the NATTEN ops are not provided '
        "by nat_mm.compat.natten; count with nat_mm's tools/get_flops.py (mmengine's analyzer, "
        'which counts neighborhood attention as its q.k and a.v multiply-adds)')

"""Neighborhood-attention operators (torch only): ``na2d``, ``na2d_qk``, ``na2d_av``."""
from ._export import export_decompositions
from ._extension import extension_has_cuda, extension_loaded
from .functional import na2d, na2d_av, na2d_qk

__all__ = ['na2d', 'na2d_qk', 'na2d_av', 'extension_loaded', 'extension_has_cuda',
           'export_decompositions']

"""The package imports and its compiled extension loaded (a failed build fails here, not skips)."""
import importlib


def test_imports():
    for name in ('nat_mm', 'nat_mm.ops', 'nat_mm.models'):
        importlib.import_module(name)


def test_compiled_extension_loaded():
    import torch

    import nat_mm.ops

    assert nat_mm.ops.extension_loaded(), 'nat_mm._C did not load: the extension did not build'
    importlib.import_module('nat_mm._C')  # the prebuilt module, not the JIT fallback
    for op in ('na2d_forward', 'na2d_backward', 'na2d_qk_forward', 'na2d_qk_backward',
               'na2d_av_forward', 'na2d_av_backward'):
        assert hasattr(torch.ops.nat_mm, op)

"""The package's public names, its mm layer and its compiled extension loaded (a failed build
fails here, not skips). That nat_mm, nat_mm.ops and nat_mm.models import without OpenMMLab (and
nat_mm.mm is then None): tests/models/test_backbone.py::test_layering_models_import_without_openmmlab."""
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# The lent GPU machine runs this file without OpenMMLab packages.
OPENMMLAB = all(importlib.util.find_spec(p) for p in ('mmengine', 'mmcv', 'mmdet', 'mmseg'))


def test_public_names():
    """Every name in ``__all__`` of nat_mm, nat_mm.ops, nat_mm.models (and nat_mm.mm) exists,
    and plain ``import nat_mm`` loaded the mm layer where OpenMMLab is installed."""
    import nat_mm
    names = ['nat_mm', 'nat_mm.ops', 'nat_mm.models'] + (['nat_mm.mm'] if OPENMMLAB else [])
    for name in names:
        module = importlib.import_module(name)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f'{name}.__all__ names what it does not define: {missing}'
    for name in ('NAT', 'DiNAT', 'DiNAT_s'):  # plain torch at the top, mmengine ones in mm
        assert getattr(nat_mm, name) is getattr(nat_mm.models, name)
    if not OPENMMLAB:
        return
    assert nat_mm.mm is sys.modules['nat_mm.mm']
    assert nat_mm.mm.registered_in == ['mmdet', 'mmseg']
    for name in ('NAT', 'DiNAT', 'DiNAT_s'):
        assert issubclass(getattr(nat_mm.mm, name), getattr(nat_mm.models, name))


@pytest.mark.slow  # a subprocess: about 5 s here
@pytest.mark.skipif(not OPENMMLAB, reason='needs mmengine, mmcv, mmdet and mmseg')
def test_a_broken_mm_layer_is_not_hidden():
    """Only a missing OpenMMLab package turns nat_mm.mm into None; any other ImportError in the
    mm layer (here: one of its own modules) reaches the user instead of a silent ``mm = None``
    and then "NAT is not in the mmdet::model registry"."""
    code = ("import sys\n"
            "sys.modules['nat_mm.mm.registry'] = None\n"
            "try:\n"
            "    import nat_mm\n"
            "except ImportError as error:\n"
            "    print('RAISED', error.name)\n"
            "else:\n"
            "    print('IMPORTED', nat_mm.mm)\n")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == 'RAISED nat_mm.mm.registry'


def test_compiled_extension_loaded():
    import torch

    import nat_mm.ops

    assert nat_mm.ops.extension_loaded(), 'nat_mm._C did not load: the extension did not build'
    importlib.import_module('nat_mm._C')  # the prebuilt module, not the JIT fallback
    for op in ('na2d_forward', 'na2d_backward', 'na2d_qk_forward', 'na2d_qk_backward',
               'na2d_av_forward', 'na2d_av_backward'):
        assert hasattr(torch.ops.nat_mm, op)

"""NAT_MM_CUDA_KERNEL: which implementation runs a fused na2d on a CUDA device (nat_mm/ops/_dispatch.py).

No GPU here: the device's capability, triton and the compiled CUDA kernels are simulated with
monkeypatch, and ``cuda_backend`` is called with a CUDA device object (no tensor is made on it).
"""
import pytest
import torch

from nat_mm.ops import _dispatch, _triton, extension_loaded, na2d

CUDA = torch.device('cuda', 0)


@pytest.fixture
def gpu(monkeypatch):
    """A simulated GPU: set ``gpu.capability``, ``gpu.triton``, ``gpu.extension_cuda``."""

    class Gpu:
        capability = (9, 0)
        triton = True
        extension_cuda = True

    state = Gpu()
    monkeypatch.delenv(_dispatch.ENV, raising=False)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: state.capability)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Simulated GPU')
    monkeypatch.setattr(_triton, '_triton_import_error',
                        lambda: None if state.triton else 'triton does not import (simulated)')
    monkeypatch.setattr(_dispatch, 'extension_has_cuda', lambda: state.extension_cuda)
    return state


@pytest.mark.parametrize('dtype, capability, triton, extension, expected', [
    (torch.bfloat16, (9, 0), True, True, 'triton'),
    (torch.float16, (8, 0), True, True, 'triton'),
    (torch.float32, (9, 0), True, True, 'extension'),    # fp32: the C++ tiled kernels
    (torch.float64, (9, 0), True, True, 'extension'),
    (torch.float16, (7, 5), True, True, 'extension'),    # no bf16/fp16 tensor-core tl.dot
    (torch.bfloat16, (9, 0), False, True, 'extension'),  # triton missing
    (torch.float32, (9, 0), True, False, 'triton'),      # no C++ CUDA kernels: triton, not gather
    (torch.float64, (9, 0), True, False, 'torch'),       # nothing else serves float64
    (torch.float16, (7, 5), False, False, 'torch'),
], ids=['bf16-sm90', 'fp16-sm80', 'fp32', 'fp64', 'fp16-sm75', 'no-triton', 'fp32-no-ext',
        'fp64-no-ext', 'nothing'])
def test_auto(gpu, dtype, capability, triton, extension, expected):
    gpu.capability, gpu.triton, gpu.extension_cuda = capability, triton, extension
    assert _dispatch.cuda_backend(dtype, CUDA) == expected


@pytest.mark.parametrize('choice, expected', [('triton', 'triton'), ('tiled', 'extension'),
                                              ('reference', 'extension'), ('flex', 'flex'),
                                              ('auto', 'triton'), ('', 'triton')])
def test_forced_choice(gpu, monkeypatch, choice, expected):
    monkeypatch.setenv(_dispatch.ENV, choice)
    assert _dispatch.cuda_backend(torch.float16, CUDA) == expected


@pytest.mark.parametrize('choice, dtype, setup, why', [
    ('triton', torch.float16, dict(capability=(7, 5)),
     r'compute capability 8\.0 or newer .*Simulated GPU is 7\.5'),
    ('triton', torch.float64, {}, 'float16, bfloat16 and float32, not torch.float64'),
    ('triton', torch.float16, dict(triton=False), 'triton does not import'),
    ('tiled', torch.float32, dict(extension_cuda=False), 'no CUDA kernels|not available'),
    ('reference', torch.float32, dict(extension_cuda=False), 'no CUDA kernels|not available'),
], ids=['triton-sm75', 'triton-fp64', 'triton-missing', 'tiled-no-ext', 'reference-no-ext'])
def test_forced_choice_that_cannot_run_raises(gpu, monkeypatch, choice, dtype, setup, why):
    for name, value in setup.items():
        setattr(gpu, name, value)
    monkeypatch.setenv(_dispatch.ENV, choice)
    with pytest.raises(RuntimeError, match=f'NAT_MM_CUDA_KERNEL={choice}, but that kernel cannot '
                                           f'run here: .*({why})'):
        _dispatch.cuda_backend(dtype, CUDA)


def test_bad_value_lists_the_choices(gpu, monkeypatch):
    monkeypatch.setenv(_dispatch.ENV, 'fast')
    with pytest.raises(ValueError, match="must be one of auto, triton, tiled, reference, flex, "
                                         "got 'fast'"):
        _dispatch.cuda_backend(torch.float16, CUDA)


def test_cpu_tensors_ignore_the_variable(monkeypatch):
    """The variable concerns CUDA tensors: CPU tensors take the C++ CPU kernels whatever it says."""
    monkeypatch.setenv(_dispatch.ENV, 'triton')
    q = torch.randn(1, 9, 9, 1, 8)
    assert _dispatch.fused_backend(q) == ('extension' if extension_loaded() else 'torch')
    assert na2d(q, q, q, 3).shape == q.shape


def test_cuda_backend_traces_as_a_constant(gpu):
    """torch.compile(fullgraph=True) takes the choice as a constant at trace time: the device
    queries and the environment read inside cause no graph break."""
    def fn(x):
        backend = _dispatch.cuda_backend(torch.float16, CUDA)
        return x * 2 if backend == 'triton' else x * 3

    x = torch.ones(3)
    assert torch.equal(torch.compile(fn, backend='eager', fullgraph=True)(x), x * 2)

"""Build and install nat_mm and its ``nat_mm._C`` extension.

The CPU kernels are always built. The CUDA kernels are built when a CUDA toolkit is found
(``CUDA_HOME`` / nvcc) unless ``NAT_MM_NO_CUDA=1``; with no GPU visible, ``TORCH_CUDA_ARCH_LIST``
defaults to sm_80 and sm_90. Build with ``pip install --no-build-isolation -e .`` so the
extension compiles against the installed torch.
"""
import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _load_build_settings():
    spec = importlib.util.spec_from_file_location('_nat_mm_build', ROOT / 'nat_mm/ops/_build.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extensions():
    build = _load_build_settings()
    cuda_home = build.find_cuda_home()
    if cuda_home and not os.environ.get('CUDA_HOME'):
        os.environ['CUDA_HOME'] = cuda_home  # before torch.utils.cpp_extension reads it
    import torch
    from torch.utils import cpp_extension

    sources = [f'csrc/{s}' for s in build.CPU_SOURCES]
    with_cuda = cpp_extension.CUDA_HOME is not None and not os.environ.get('NAT_MM_NO_CUDA')
    kwargs = dict(include_dirs=[str(ROOT / 'csrc')],
                  extra_compile_args={'cxx': build.cpu_flags()},
                  extra_link_args=build.cpu_link_flags())
    if not with_cuda:
        return [cpp_extension.CppExtension('nat_mm._C', sources, **kwargs)]
    if not torch.cuda.is_available() and not os.environ.get('TORCH_CUDA_ARCH_LIST'):
        os.environ['TORCH_CUDA_ARCH_LIST'] = build.DEFAULT_CUDA_ARCHS
    sources += [f'csrc/{s}' for s in build.CUDA_SOURCES]
    kwargs['include_dirs'] += build.cuda_library_includes(cpp_extension.CUDA_HOME)
    kwargs['extra_compile_args'] = {'cxx': build.cpu_flags() + ['-DNAT_MM_WITH_CUDA'],
                                    'nvcc': build.cuda_flags()}
    return [cpp_extension.CUDAExtension('nat_mm._C', sources, **kwargs)]


def main():
    ext_modules = extensions()  # first: it settles CUDA_HOME before torch reads it
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name='nat_mm',
        version='0.1.0',
        description='Neighborhood Attention Transformer (NAT/DiNAT) backbones and kernels for '
        'OpenMMLab 2.0 (mmdet 3, mmseg 1)',
        packages=find_packages(include=['nat_mm', 'nat_mm.*']),
        python_requires='>=3.10',
        install_requires=['torch', 'timm'],
        ext_modules=ext_modules,
        cmdclass={'build_ext': BuildExtension.with_options(use_ninja=True)},
        zip_safe=False,
    )


if __name__ == '__main__':
    main()

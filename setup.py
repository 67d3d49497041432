"""Build and install nat_mm and its ``nat_mm._C`` extension.

The CPU kernels are always built. The CUDA kernels are built when a CUDA toolkit is found
(``CUDA_HOME`` / nvcc) unless ``NAT_MM_NO_CUDA=1``. With a GPU visible, torch builds for that GPU;
with none visible and no ``TORCH_CUDA_ARCH_LIST`` set, the build must still run on every GPU that
torch 2.14 supports, so it defaults to ``7.5;8.0;9.0;10.0;12.0+PTX`` (``_build.DEFAULT_CUDA_ARCHS``):
one cubin per major family (a cubin runs on later minor revisions of its major: 8.0 on 8.6 and
8.9), PTX of the newest for later GPUs, and no extra cubins for minor revisions, since each arch
adds its own nvcc pass to every build. Build with ``pip install --no-build-isolation -e .`` so the
extension compiles against the installed torch.
"""
import importlib.util
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
    build.settle_cuda_home()  # before torch.utils.cpp_extension reads CUDA_HOME
    from torch.utils import cpp_extension

    config = build.extension_config(cpp_extension.CUDA_HOME)
    kwargs = dict(include_dirs=config['include_dirs'], extra_link_args=config['link_flags'])
    if not config['with_cuda']:
        return [cpp_extension.CppExtension('nat_mm._C', config['sources'],
                                           extra_compile_args={'cxx': config['cxx_flags']},
                                           **kwargs)]
    return [cpp_extension.CUDAExtension('nat_mm._C', config['sources'],
                                        extra_compile_args={'cxx': config['cxx_flags'],
                                                            'nvcc': config['cuda_flags']},
                                        **kwargs)]


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

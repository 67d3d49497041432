"""What the Triton kernels compile to, per GPU arch and tile config, without a GPU.

For each (arch, dtype, head dim, config) it compiles the three kernels (forward, dQ + drpb,
dK/dV) with Triton's own compiler (``nat_mm.ops._triton.compile_for_gpu``), then asks the ptxas
that ships with triton (``-v``) for registers per thread and spill stores, and reads the shared
memory a program needs and which matrix instruction carries ``tl.dot`` (``wgmma`` on sm_90,
``mma.sync`` on sm_80; ``none`` would mean the CUDA cores). A compile-time view to choose
autotune candidates by; only a GPU can time them (tools/gpu/check.sh).

Example:
    python tools/gpu/triton_report.py --archs 80 90 --head-dims 32 64
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from nat_mm.ops import _triton  # noqa: E402

DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}


def ptxas_stats(ptx: str, arch: int):
    """(registers, spill-store bytes) that ptxas reports for ``ptx``."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')
    with tempfile.NamedTemporaryFile('w', suffix='.ptx') as f:
        f.write(ptx)
        f.flush()
        target = f'sm_{arch}a' if arch >= 90 else f'sm_{arch}'
        result = subprocess.run([ptxas, f'-arch={target}', '-v', f.name, '-o', os.devnull],
                                capture_output=True, text=True, check=True)
    registers = re.search(r'Used (\d+) registers', result.stderr)
    spills = re.search(r'(\d+) bytes spill stores', result.stderr)
    return int(registers.group(1)), int(spills.group(1)) if spills else 0


def report_rows(archs, dtypes, head_dims, configs, kernel_size=(7, 7)):
    for arch in archs:
        for dtype in dtypes:
            for head_dim in head_dims:
                for config in configs:
                    for name in ('fwd', 'dq', 'dkv'):
                        compiled = _triton.compile_for_gpu(name, arch, DTYPES[dtype], config,
                                                           head_dim, kernel_size)
                        ptx = compiled.asm['ptx']
                        registers, spills = ptxas_stats(ptx, arch)
                        mma = ('wgmma' if 'wgmma' in ptx else
                               'mma.sync' if 'mma.sync' in ptx else 'none')
                        yield dict(arch=arch, dtype=dtype, head_dim=head_dim, kernel=name,
                                   config=config, shared=compiled.metadata.shared,
                                   registers=registers, spills=spills, mma=mma)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', type=int, nargs='+', default=[80, 90])
    parser.add_argument('--dtypes', nargs='+', default=['bf16'], choices=sorted(DTYPES))
    parser.add_argument('--head-dims', type=int, nargs='+', default=[32])
    parser.add_argument('--kernel-size', type=int, default=7)
    args = parser.parse_args()
    print(f'# Triton kernels compiled with triton {__import__("triton").__version__}, '
          f'{args.kernel_size}x{args.kernel_size}, rpb')
    print('| arch | dtype | D | tile / chunk, warps | kernel | shared KiB | registers | '
          'spill bytes | tl.dot |')
    print('|---|---|---:|---|---|---:|---:|---:|---|')
    for r in report_rows(args.archs, args.dtypes, args.head_dims, _triton.CONFIGS,
                         (args.kernel_size, args.kernel_size)):
        c = r['config']
        print(f'| sm_{r["arch"]} | {r["dtype"]} | {r["head_dim"]} | {c.ty}x{c.tx} / {c.kr}x{c.kc}, '
              f'{c.num_warps} | {r["kernel"]} | {r["shared"] / 1024:.1f} | {r["registers"]} | '
              f'{r["spills"]} | {r["mma"]} |', flush=True)


if __name__ == '__main__':
    main()

"""A model (not a measurement) of the CUDA kernels' speed on NAT-Tiny's layers.

What each kernel is charged with (bytes requested, FLOPs, exponentials; per layer, from the
kernels' code and the ops' window rule) is documented and computed in
nat_mm/utils/speed_model.py; NAT-Tiny's layers at 800x1216 and 512x2048 input
(nat_mm.utils.benchmark.nat_tiny_layers). ``--triton`` models the Triton kernels
(nat_mm/ops/_triton_kernels.py: tensor-core FLOPs computed and useful, exponentials) instead of the
C++/CUDA ones.

Usage: python tools/na_speed_model.py [--dtypes bf16 fp32] [--triton]  (prints Markdown tables)
"""
import argparse

from nat_mm.utils.benchmark import nat_tiny_layers
from nat_mm.utils.speed_model import DTYPE_BYTES, print_table, print_triton_table


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dtypes', nargs='+', default=['bf16', 'fp32'], choices=DTYPE_BYTES)
    parser.add_argument('--triton', action='store_true',
                        help='model the Triton kernels (8x8 tiles, 4x16 chunks) instead')
    return parser.parse_args()


def main():
    args = parse_args()
    layers = nat_tiny_layers(800, 1216) + nat_tiny_layers(512, 2048)
    if args.triton:
        print_triton_table(layers, args.dtypes)
    else:
        print_table(layers, args.dtypes)


if __name__ == '__main__':
    main()

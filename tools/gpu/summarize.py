"""tools/gpu/check.sh's summary: merge the benchmark JSON files, rank the backends, say which one
``NAT_MM_CUDA_KERNEL=auto`` should pick per dtype, and read ptxas' register and spill report.

Standard library only (no torch), so it runs anywhere on a copy of the files check.sh returns: the
summary itself is nat_mm/utils/gpu_report.py, loaded by path (nat_mm, and so torch, is not
imported).

``merge OUT IN...``: the rows of tools/benchmark_op.py JSON files (``{"header", "rows"}``; one
file per run, so per dtype and backend set) into one file ``{"sources", "rows", "env"}``. Each row
gets ``dtype`` (the row's own, else the one named in its file's header, else in the file name
``bench_<dtype>[_part].json``) and ``source``. A row measured twice (``nat_mm``, i.e. auto, is in
every benchmark_op run) is kept once, from the main run (``bench_<dtype>.json`` before
``bench_<dtype>_<part>.json``). ``--env`` adds check.sh's
env.json (the GPU, and which backend ``auto`` picks today per dtype).

``report BENCH [--backbone JSON]``: per dtype a table of each backend's median times summed over
the layers (forward, forward+backward, and forward+backward per layer), then one line per dtype:
the backend ``auto`` should pick, the fastest of ``CANDIDATES`` by the summed forward+backward
median over the layers, measured on every layer; then the backbone table (benchmark_backbone.py).

``spills LOG``: ptxas' ``-v`` / ``-warn-spills`` lines of a build log (nvcc with
``-Xptxas -v -Xptxas -warn-spills``): kernels compiled, registers, stack frames, spills.

Usage:
    python tools/gpu/summarize.py merge gpu_out/bench.json /tmp/nat_mm_check/json/bench_*.json
    python tools/gpu/summarize.py report gpu_out/bench.json --backbone gpu_out/backbone.json
    python tools/gpu/summarize.py spills gpu_out/build.log
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path


def _load_report():
    """nat_mm/utils/gpu_report.py, loaded by path (as build_capped.py loads _build.py)."""
    path = Path(__file__).resolve().parents[2] / 'nat_mm' / 'utils' / 'gpu_report.py'
    spec = importlib.util.spec_from_file_location('_nat_mm_gpu_report', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('merge', help='merge benchmark_op.py JSON files into one')
    p.add_argument('out')
    p.add_argument('inputs', nargs='*')
    p.add_argument('--env', help="check.sh's env.json (GPU, auto's current picks)")
    p = sub.add_parser('report', help='ranking tables and the recommendation per dtype')
    p.add_argument('bench', help='a merged file (merge) or one benchmark_op.py JSON file')
    p.add_argument('--backbone', help='benchmark_backbone.py JSON')
    p.add_argument('--out', help='also append the report to this file')
    p = sub.add_parser('spills', help="ptxas' register and spill report of a build log")
    p.add_argument('log')
    args = parser.parse_args(argv)

    if args.command == 'merge':
        inputs = args.inputs
        merged = report.merge(inputs, env=report.read_json(args.env))
        with open(args.out, 'w') as f:
            json.dump(merged, f, indent=1)
        print(f"summarize: {len(merged['rows'])} rows from {len(inputs)} files -> {args.out}")
        return 0
    if args.command == 'report':
        data = report.read_json(args.bench) or {}
        if 'sources' not in data and 'rows' in data:  # one benchmark_op.py file
            data = report.merge([args.bench])
        lines = report.report_lines(data, report.read_json(args.backbone))
    else:
        try:
            with open(args.log, errors='replace') as f:
                lines = report.spills_lines(f.read())
        except OSError as error:
            lines = [f'ptxas: cannot read {args.log}: {error}']
    text = '\n'.join(lines)
    print(text)
    if getattr(args, 'out', None):
        with open(args.out, 'a') as f:
            f.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

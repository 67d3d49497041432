"""The summary of tools/gpu/check.sh's results: merge the benchmark JSON files, rank the backends,
say which one ``NAT_MM_CUDA_KERNEL=auto`` should pick per dtype, and read ptxas' register and
spill report (tools/gpu/summarize.py is its command line).

Standard library only (no torch): tools/gpu/summarize.py loads this file by path, without
importing nat_mm, so it runs anywhere on a copy of the files check.sh returns.

- :func:`merge`: the rows of tools/benchmark_op.py JSON files (``{"header", "rows"}``; one file
  per run, so per dtype and backend set) as one ``{"sources", "rows", "env"}``. Each row gets
  ``dtype`` (the row's own, else the one named in its file's header, else in the file name
  ``bench_<dtype>[_part].json``) and ``source``. A row measured twice (``nat_mm``, i.e. auto, is
  in every benchmark_op run) is kept once, from the main run (``bench_<dtype>.json`` before
  ``bench_<dtype>_<part>.json``); ``env`` is check.sh's env.json (the GPU, and which backend
  ``auto`` picks today per dtype).
- :func:`report_lines`: per dtype a table of each backend's median times summed over the layers
  (forward, forward+backward, and forward+backward per layer), then one line per dtype: the
  backend ``auto`` should pick (:func:`recommend`: the fastest of :data:`CANDIDATES` by the summed
  forward+backward median over the layers, measured on every layer); then the backbone table
  (benchmark_backbone.py).
- :func:`spills_lines`: ptxas' ``-v`` / ``-warn-spills`` lines of a build log (nvcc with
  ``-Xptxas -v -Xptxas -warn-spills``): kernels compiled, registers, stack frames, spills.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import OrderedDict

__all__ = ['CANDIDATES', 'AUTO_NAMES', 'dtype_of', 'merge', 'totals', 'recommend',
           'report_lines', 'backbone_lines', 'parse_ptxas', 'demangle', 'spills_lines',
           'read_json']

# benchmark_op.py backend -> the NAT_MM_CUDA_KERNEL value it runs: the choices for `auto`.
CANDIDATES = OrderedDict([('triton', 'triton'), ('tiled', 'tiled'), ('nat_mm_ref', 'reference')])
# What env.json's `auto` entries (nat_mm.ops._dispatch.cuda_backend) mean as candidates.
AUTO_NAMES = {'triton': 'triton', 'extension': 'tiled', 'flex': 'flex', 'torch': 'torch'}
DTYPE_ORDER = ['bfloat16', 'float16', 'float32', 'float64']
MODES = ('fwd', 'fwd+bwd')
CLOSE = 0.05  # a pick this close to the runner-up is within the noise of one run
_DTYPE_RE = re.compile(r'(?<![a-z0-9])(bfloat16|float16|float32|float64)(?![0-9])')


def dtype_of(row, header, path):
    """The dtype of a benchmark row: its own field, else its file's header, else the file name."""
    if row.get('dtype'):
        return str(row['dtype']).replace('torch.', '')
    for text in (header or '', os.path.basename(path)):
        match = _DTYPE_RE.search(text)
        if match:
            return match.group(1)
    return 'unknown'


def merge(paths, env=None):
    """Rows of several benchmark_op.py JSON files as one dict (see the module docstring).

    Files that are missing or unreadable are listed in ``sources`` with an ``error``."""
    merged = OrderedDict(sources=[], rows=[], env=env or {})
    seen = set()
    # check.sh names a dtype's main run bench_<dtype>.json and its other runs
    # bench_<dtype>_<part>.json: fewer underscores first puts the main runs first.
    for path in sorted(paths, key=lambda p: (os.path.basename(p).count('_'), p)):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as error:
            merged['sources'].append(dict(file=os.path.basename(path), error=str(error)))
            continue
        header = data.get('header', '')
        kept = 0
        for row in data.get('rows', []):
            row = dict(row, dtype=dtype_of(row, header, path), source=os.path.basename(path))
            key = (row['dtype'], row.get('layer'), row.get('mode'), row.get('backend'))
            if key in seen:
                continue
            seen.add(key)
            merged['rows'].append(row)
            kept += 1
        merged['sources'].append(dict(file=os.path.basename(path), header=header, rows=kept))
    return merged


def _sorted_dtypes(dtypes):
    return sorted(dtypes, key=lambda d: (DTYPE_ORDER.index(d) if d in DTYPE_ORDER else 99, d))


def totals(rows, dtype):
    """Per backend: ``{'fwd': sum ms, 'fwd+bwd': sum ms, 'layers': {mode: {layer: ms}},
    'missing': {mode: [layers]}, 'notes': [...]}`` over the layers measured in ``dtype``."""
    rows = [r for r in rows if r.get('dtype') == dtype]
    layers = list(OrderedDict.fromkeys(r['layer'] for r in rows))
    result = OrderedDict()
    for row in rows:
        entry = result.setdefault(row['backend'], dict(layers={m: {} for m in MODES}, notes=[]))
        if row.get('median_ms') is None:
            note = row.get('note') or 'not measured'
            entry['notes'].append(f"{row['layer']} {row['mode']}: {note}")
        elif row.get('mode') in MODES:
            entry['layers'][row['mode']][row['layer']] = row['median_ms']
    for entry in result.values():
        for mode in MODES:
            measured = entry['layers'][mode]
            entry[mode] = sum(measured.values()) if measured else None
            entry.setdefault('missing', {})[mode] = [lay for lay in layers if lay not in measured]
    return layers, result


def recommend(rows, dtype, auto_now=None):
    """The backend ``auto`` should pick for ``dtype`` and the line that says so.

    Returns:
        tuple[str | None, str]: the benchmark backend name (a key of ``CANDIDATES``) or None
        when no candidate was measured on every layer, and the recommendation line.
    """
    layers, per_backend = totals(rows, dtype)
    eligible, excluded = [], []
    for name in CANDIDATES:
        entry = per_backend.get(name)
        if entry is None:
            excluded.append(f'{name} not run')
        elif entry['missing']['fwd+bwd'] or entry['fwd+bwd'] is None:
            excluded.append(f"{name} missing on {', '.join(entry['missing']['fwd+bwd'])}")
        else:
            eligible.append((entry['fwd+bwd'], name))
    now = AUTO_NAMES.get(auto_now, auto_now) if auto_now else None
    now_text = f'auto today: {now}' if now else 'auto today: unknown (no GPU in this run)'
    if not eligible:
        why = '; '.join(excluded) or 'no rows'
        return None, f'auto for {dtype}: no recommendation: no candidate measured ({why})'
    eligible.sort()
    best_ms, best = eligible[0]
    others = [f'{name} {ms / best_ms:.2f}x' for ms, name in eligible[1:]]
    fwd = [(per_backend[n]['fwd'], n) for _, n in eligible if per_backend[n]['fwd'] is not None]
    line = (f"auto for {dtype}: {best} (NAT_MM_CUDA_KERNEL={CANDIDATES[best]}): fwd+bwd "
            f"{best_ms:.3f} ms summed over {len(layers)} layers")
    if others:
        line += ' (' + ', '.join(others) + ' of it)'
    if fwd:
        line += f'; fwd only: {min(fwd)[1]} fastest'
    if len(eligible) > 1 and eligible[1][0] < best_ms * (1 + CLOSE):
        line += f'; runner-up within {CLOSE:.0%}: rerun before changing auto'
    if excluded:
        line += '; ' + '; '.join(excluded)
    if now:
        line += f"; {now_text} -> {'keep' if now == best else 'change'}"
    else:
        line += f'; {now_text}'
    return best, line


def _fmt(ms, width=10):
    return f'{ms:{width}.3f}' if ms is not None else f"{'-':>{width}}"


def report_lines(merged, backbone=None):
    """The summary text: per dtype a ranking table and the recommendation, then the backbones."""
    rows = merged.get('rows', [])
    auto = (merged.get('env') or {}).get('auto', {})
    lines = []
    recommendations = []
    for dtype in _sorted_dtypes({r.get('dtype', 'unknown') for r in rows}):
        layers, per_backend = totals(rows, dtype)
        short = [lay.split('@')[0] for lay in layers]
        lines.append(f'# {dtype}: median ms summed over {len(layers)} layers '
                     f"({', '.join(layers)}); x best = fwd+bwd over the fastest's")
        head = f"{'backend':<12}{'fwd':>10}{'fwd+bwd':>10}{'x best':>8}"
        head += ''.join(f'{s + " f+b":>13}' for s in short)
        lines.append(head)
        ranked = sorted(per_backend.items(), key=lambda kv: (kv[1]['fwd+bwd'] is None,
                                                             kv[1]['fwd+bwd'] or 0.0,
                                                             kv[1]['fwd'] or 0.0))
        best = next((e['fwd+bwd'] for _, e in ranked if e['fwd+bwd']), None)
        for name, entry in ranked:
            ratio = (f"{entry['fwd+bwd'] / best:8.2f}" if best and entry['fwd+bwd'] is not None
                     else f"{'-':>8}")
            line = f"{name:<12}{_fmt(entry['fwd'])}{_fmt(entry['fwd+bwd'])}{ratio}"
            line += ''.join(_fmt(entry['layers']['fwd+bwd'].get(lay), 13) for lay in layers)
            incomplete = [f'{m} misses {len(v)}' for m, v in entry['missing'].items() if v]
            if incomplete:
                line += '  (' + ', '.join(incomplete) + ')'
            lines.append(line)
            for note in entry['notes'][:2]:
                lines.append(f'{"":<12}  {note[:110]}')
        lines.append('')
        recommendations.append(recommend(rows, dtype, auto.get(dtype))[1])
    if not rows:
        lines.append('# no benchmark rows')
    if backbone:
        lines += backbone_lines(backbone) + ['']
    lines += recommendations or ['auto: no recommendation: no benchmark rows']
    return lines


def backbone_lines(data):
    """benchmark_backbone.py's results as a table with each model's ratio to the Swin row."""
    env = data.get('env', {})
    results = data.get('results', [])
    shape = 'x'.join(str(s) for s in env.get('shape', []))
    lines = [f"# backbones: {env.get('device_name', env.get('device', '?'))}, "
             f"{env.get('dtype', '?')}, input {env.get('batch', 1)}x3x{shape}, median of "
             f"{env.get('repeats', '?')}"]
    lines.append(f"{'model':<22}{'mode':<7}{'median ms':>11}{'peak MB':>10}{'vs Swin':>9}")
    for r in results:
        swin = next((s for s in results if s['mode'] == r['mode']
                     and s['model'].startswith('Swin')), None)
        ratio = (f"{r['median_ms'] / swin['median_ms']:8.2f}x" if swin and swin['median_ms']
                 else f"{'-':>9}")
        lines.append(f"{r['model']:<22}{r['mode']:<7}{r['median_ms']:>11.1f}"
                     f"{r.get('peak_mb') or 0:>10.1f}{ratio}")
    return lines


# ptxas -v: "Compiling entry function 'NAME' for 'sm_90'", "Function properties for NAME",
# "    S bytes stack frame, A bytes spill stores, B bytes spill loads",
# "Used R registers, ..."; -warn-spills: "ptxas warning : Registers are spilled to local memory
# in function 'NAME', A bytes spill stores, B bytes spill loads".
_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS_RE = re.compile(r'Function properties for (\S+)')
_FRAME_RE = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill '
                       r'loads')
_REGS_RE = re.compile(r'Used (\d+) registers')
_WARN_RE = re.compile(r"Registers are spilled to local memory in function '([^']+)', (\d+) bytes "
                      r'spill stores, (\d+) bytes spill loads')


def parse_ptxas(text):
    """Kernels of a build log's ptxas report: ``{(name, arch): dict(registers, stack,
    spill_stores, spill_loads)}`` (entry functions only), plus spill warnings as
    ``(name, stores, loads)``."""
    kernels = OrderedDict()
    current = props = None
    warnings = []
    for line in text.splitlines():
        match = _ENTRY_RE.search(line)
        if match:
            current = (match.group(1), match.group(2))
            kernels.setdefault(current, dict(registers=None, stack=0, spill_stores=0,
                                             spill_loads=0))
            continue
        match = _PROPS_RE.search(line)
        if match:
            props = match.group(1)
            continue
        match = _FRAME_RE.search(line)
        if match and current and props == current[0]:
            kernels[current].update(stack=int(match.group(1)), spill_stores=int(match.group(2)),
                                    spill_loads=int(match.group(3)))
            continue
        match = _REGS_RE.search(line)
        if match and current:
            kernels[current]['registers'] = int(match.group(1))
            continue
        match = _WARN_RE.search(line)
        if match:
            warnings.append((match.group(1), int(match.group(2)), int(match.group(3))))
    return kernels, warnings


def demangle(names):
    """Demangled C++ names through c++filt when it is on the PATH, else the names unchanged."""
    names = list(names)
    if not names or shutil.which('c++filt') is None:
        return names
    try:
        out = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True,
                             text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return names
    return out if len(out) == len(names) else names


def _short(name, width=100):
    name = re.sub(r'\(anonymous namespace\)::', '', name)
    return name if len(name) <= width else name[:width - 3] + '...'


def spills_lines(text):
    """One summary line, then one line per kernel that spills or has a stack frame."""
    kernels, warnings = parse_ptxas(text)
    if not kernels and not warnings:
        return ['ptxas: no -v report in the log (NVCC_APPEND_FLAGS not applied, or nothing '
                'compiled for the GPU)']
    archs = sorted({arch for _, arch in kernels})
    spilling = {k: v for k, v in kernels.items() if v['spill_stores'] or v['spill_loads']}
    spilling_names = {name for name, _ in spilling} | {w[0] for w in warnings}
    stacked = {k: v for k, v in kernels.items() if v['stack'] and k not in spilling}
    regs = [(v['registers'], k[0]) for k, v in kernels.items() if v['registers'] is not None]
    line = (f"ptxas ({', '.join(archs) or '?'}): {len(kernels)} kernels, "
            f'{len(spilling_names)} with register spills, {len(stacked)} more with a stack frame')
    if regs:
        most, name = max(regs)
        line += f'; most registers: {most} ({_short(demangle([name])[0], 60)})'
    lines = [line]
    listed = list(spilling.items()) + list(stacked.items())
    for (name, arch), v in listed:
        lines.append(f"  {arch} regs {v['registers']} stack {v['stack']} B spill "
                     f"{v['spill_stores']}/{v['spill_loads']} B (st/ld): "
                     f'{_short(demangle([name])[0])}')
    for name, stores, loads in warnings:
        if name not in {n for n, _ in spilling}:
            lines.append(f'  spill warning {stores}/{loads} B (st/ld): '
                         f'{_short(demangle([name])[0])}')
    return lines


def read_json(path):
    """The JSON of ``path``, or None when it is missing or unreadable (said on stderr)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        print(f'summarize: cannot read {path}: {error}', file=sys.stderr)
        return None

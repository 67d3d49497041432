"""tools/gpu/: check.sh's pieces that run without a GPU. summarize.py on hand-written benchmark
JSON (merging, the ranking, which backend ``auto`` should pick) and on ptxas' report;
sanitize_cases.py's two ways of calling the ops; build_capped.py's flags and lock;
benchmark_backbone.py's timm Swin-T; and check.sh itself (syntax, --help, --only, the dry run)."""
import json
import os
import subprocess

import pytest
import torch

from nat_mm.testing.tools import ENV, ROOT, TOOLS, tool_cli

from nat_mm.testing import op_cases as sanitize_cases  # tools/gpu/sanitize_cases.py's cases
from nat_mm.utils import gpu_report as summarize  # tools/gpu/summarize.py's summary

GPU_TOOLS = os.path.join(TOOLS, 'gpu')
# build_capped.py's helpers stay in the tool (it must not import nat_mm before the build)
build_capped = tool_cli('gpu/build_capped')

LAYERS = ['L1@800x1216', 'L2@800x1216', 'L3@800x1216', 'L4@800x1216']


def _rows(backend, fwd, fwd_bwd, layers=LAYERS, note=None):
    """benchmark_op.py rows: per layer ms for fwd and fwd+bwd (None: not measured)."""
    rows = []
    for i, layer in enumerate(layers):
        for mode, ms in (('fwd', fwd[i]), ('fwd+bwd', fwd_bwd[i])):
            row = dict(layer=layer, map='200x304', heads=2, mode=mode, backend=backend,
                       median_ms=ms, ratio_to_nat_mm=None, peak_mb=1.0)
            if ms is None:
                row['note'] = note or 'failed: RuntimeError: boom'
            rows.append(row)
    return rows


def _write(path, dtype, rows):
    header = f'# na2d benchmark: NVIDIA H100, NAT_MM_CUDA_KERNEL=auto, torch.{dtype}, torch 2.11'
    path.write_text(json.dumps(dict(header=header, rows=rows)))
    return str(path)


@pytest.fixture
def bench_files(tmp_path):
    """bf16: a main run (triton fastest) and a flex run (with nat_mm again); fp32: tiled
    fastest, triton failed on one layer."""
    main = _write(tmp_path / 'bench_bfloat16.json', 'bfloat16',
                  _rows('nat_mm', [1] * 4, [3] * 4) + _rows('triton', [1] * 4, [3] * 4)
                  + _rows('tiled', [2] * 4, [9] * 4) + _rows('nat_mm_ref', [5] * 4, [20] * 4)
                  + _rows('sdpa', [4] * 4, [12] * 4))
    flex = _write(tmp_path / 'bench_bfloat16_flex.json', 'bfloat16',
                  _rows('nat_mm', [99] * 4, [99] * 4) + _rows('flex', [2] * 4, [6] * 4)
                  + _rows('flex_tiled', [1.5] * 4, [5] * 4))
    fp32 = _write(tmp_path / 'bench_float32.json', 'float32',
                  _rows('nat_mm', [2] * 4, [6] * 4) + _rows('triton', [1, 1, 1, None],
                                                            [2, 2, 2, None])
                  + _rows('tiled', [2] * 4, [6] * 4) + _rows('nat_mm_ref', [3] * 4, [7] * 4))
    return [flex, main, fp32]


def test_merge_takes_dtypes_from_headers_and_keeps_first_duplicate(bench_files, tmp_path):
    out = tmp_path / 'bench.json'
    env = tmp_path / 'env.json'
    env.write_text(json.dumps(dict(auto={'bfloat16': 'triton', 'float32': 'extension'})))
    summarize_cli = tool_cli('gpu/summarize')
    assert summarize_cli.main(['merge', str(out), *bench_files, '--env', str(env)]) == 0
    merged = json.loads(out.read_text())
    assert [s['file'] for s in merged['sources']] == [
        'bench_bfloat16.json', 'bench_float32.json', 'bench_bfloat16_flex.json']
    assert {r['dtype'] for r in merged['rows']} == {'bfloat16', 'float32'}
    auto_bf16 = [r for r in merged['rows'] if r['backend'] == 'nat_mm' and r['dtype'] == 'bfloat16']
    assert len(auto_bf16) == 8 and {r['source'] for r in auto_bf16} == {'bench_bfloat16.json'}
    assert merged['env']['auto']['float32'] == 'extension'


def test_merge_lists_unreadable_files_and_reads_dtype_from_the_file_name(tmp_path):
    path = tmp_path / 'bench_float16.json'
    path.write_text(json.dumps(dict(rows=_rows('tiled', [1] * 4, [2] * 4))))
    merged = summarize.merge([str(path), str(tmp_path / 'missing.json')])
    assert {r['dtype'] for r in merged['rows']} == {'float16'}
    sources = {s['file']: s for s in merged['sources']}
    assert 'error' in sources['missing.json'] and sources['bench_float16.json']['rows'] == 8


def test_recommendation_is_the_fastest_candidate_by_summed_fwd_bwd(bench_files):
    merged = summarize.merge(bench_files)
    best, line = summarize.recommend(merged['rows'], 'bfloat16', 'triton')
    assert best == 'triton'
    assert 'NAT_MM_CUDA_KERNEL=triton' in line and '12.000 ms summed over 4 layers' in line
    assert 'tiled 3.00x' in line and 'nat_mm_ref 6.67x' in line and line.endswith('-> keep')
    # flex and sdpa are peers, never the pick, even when faster than a candidate
    assert 'flex' not in line and 'sdpa' not in line


def test_recommendation_skips_a_candidate_missing_a_layer_and_says_change(bench_files):
    merged = summarize.merge(bench_files)
    best, line = summarize.recommend(merged['rows'], 'float32', 'extension')
    assert best == 'tiled'  # triton is faster where it ran but failed on L4
    assert 'triton missing on L4@800x1216' in line
    assert 'nat_mm_ref 1.17x' in line and 'auto today: tiled -> keep' in line
    best, line = summarize.recommend(merged['rows'], 'float32', 'triton')
    assert line.endswith('auto today: triton -> change')


def test_recommendation_flags_a_close_runner_up_and_handles_no_candidates():
    rows = [dict(r, dtype='float16') for r in _rows('triton', [1] * 4, [10] * 4)
            + _rows('tiled', [1] * 4, [10.2] * 4) + _rows('flex', [1] * 4, [5] * 4)]
    best, line = summarize.recommend(rows, 'float16')
    assert best == 'triton' and 'runner-up within 5%' in line
    assert 'auto today: unknown' in line and 'nat_mm_ref not run' in line
    best, line = summarize.recommend([r for r in rows if r['backend'] == 'flex'], 'float16')
    assert best is None and 'no recommendation' in line


def test_report_ranks_every_backend_and_ends_with_one_line_per_dtype(bench_files, tmp_path):
    backbone = dict(env=dict(device='cuda', device_name='NVIDIA H100', dtype='bfloat16',
                             shape=[800, 1216], batch=1, repeats=10),
                    results=[dict(model='NAT-Tiny (triton)', mode='train', median_ms=30.0,
                                  peak_mb=900.0),
                             dict(model='Swin-T (timm)', mode='train', median_ms=20.0,
                                  peak_mb=800.0)])
    lines = summarize.report_lines(summarize.merge(bench_files), backbone)
    text = '\n'.join(lines)
    bf16 = lines.index(next(line for line in lines if line.startswith('# bfloat16')))
    ranked = [line.split()[0] for line in lines[bf16 + 2:bf16 + 8]]
    assert ranked == ['nat_mm', 'triton', 'flex_tiled', 'flex', 'tiled', 'sdpa']
    assert 'NAT-Tiny (triton)' in text and '1.50x' in text
    assert lines[-2].startswith('auto for bfloat16: triton')
    assert lines[-1].startswith('auto for float32: tiled')
    failed = next(line for line in lines if 'float32' not in line and 'boom' in line)
    assert 'L4@800x1216' in failed


PTXAS = """\
ptxas info    : Compiling entry function '_ZN6nat_mm4fwdIfEEvPT_' for 'sm_90'
ptxas info    : Function properties for _ZN6nat_mm4fwdIfEEvPT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 384 bytes cmem[0]
ptxas warning : Registers are spilled to local memory in function '_ZN6nat_mm3dkvIdEEvPT_', \
148 bytes spill stores, 148 bytes spill loads
ptxas info    : Compiling entry function '_ZN6nat_mm3dkvIdEEvPT_' for 'sm_90'
ptxas info    : Function properties for _ZN6nat_mm3dkvIdEEvPT_
    144 bytes stack frame, 148 bytes spill stores, 148 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 144 bytes cumulative stack size
ptxas info    : Function properties for _ZN6nat_mm6helperEv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""


def test_spills_report_counts_kernels_registers_and_spills():
    kernels, warnings = summarize.parse_ptxas(PTXAS)
    assert len(kernels) == 2 and len(warnings) == 1
    assert kernels[('_ZN6nat_mm3dkvIdEEvPT_', 'sm_90')] == dict(
        registers=128, stack=144, spill_stores=148, spill_loads=148)
    lines = summarize.spills_lines(PTXAS)
    assert lines[0].startswith('ptxas (sm_90): 2 kernels, 1 with register spills, 0 more')
    assert 'most registers: 128' in lines[0]
    assert len(lines) == 2 and 'spill 148/148 B' in lines[1] and 'dkv' in lines[1]
    assert 'no -v report' in summarize.spills_lines('[1/3] c++ ops.cpp\n')[0]


def test_sanitize_cases_raw_and_public_ops_agree_with_the_oracle_on_the_cpu():
    from nat_mm.ops import extension_loaded

    if not extension_loaded():
        pytest.skip('needs the compiled extension')
    case = ('fp32-k3x5-d2-rpb', 1, 9, 11, 2, 8, (3, 5), (2, 1), True, torch.float32)
    torch.manual_seed(0)
    assert sanitize_cases.run_case(case, 'cpu', sanitize_cases.RawOps('nat_mm')) < 1e-5
    no_rpb = case[:8] + (False, torch.float32)
    assert sanitize_cases.run_case(no_rpb, 'cpu', sanitize_cases.PublicOps()) < 1e-5


def test_sanitize_cases_check_catches_a_wrong_value_and_a_wrong_dtype():
    want = torch.ones(3, dtype=torch.float64)
    with pytest.raises(AssertionError, match='max scaled error'):
        sanitize_cases.check('x', torch.tensor([1.0, 1.0, float('nan')]), want, torch.float32)
    with pytest.raises(AssertionError, match='want torch.float16'):
        sanitize_cases.check('x', torch.ones(3), want, torch.float16)


def test_sanitize_cases_python_backends_need_cuda_and_the_public_ops():
    with pytest.raises(SystemExit):
        tool_cli('gpu/sanitize_cases').parse_args(['--device', 'cpu', '--kernels', 'triton'])
    with pytest.raises(SystemExit):
        tool_cli('gpu/sanitize_cases').parse_args(['--kernels', 'flex', '--ops-namespace',
                                                   'nat_mm_capped'])


def test_build_capped_flags_and_stale_lock(tmp_path):
    flags = build_capped.nvcc_flags(build_capped._build_settings(), 2)
    assert '-DNAT_MAX_BLOCKS=2' in flags and '-DNAT_MM_CUDA_LIBRARY=nat_mm_capped' in flags
    assert '-DNAT_MM_CUDA_KEY=CUDA' in flags and '-lineinfo' in flags
    (tmp_path / 'lock').write_text('')  # what a killed build leaves with older torch
    with build_capped.build_lock(tmp_path):
        assert not (tmp_path / 'lock').exists()


def test_backbone_timm_swin_gives_four_maps_at_a_non_window_multiple_size():
    from nat_mm.utils import backbone_benchmark

    parse_args = tool_cli('benchmark_backbone').parse_args
    args = parse_args(['--swin', 'timm', '--shape', '64', '96'])
    assert args.swin == 'timm'
    models = backbone_benchmark.build_models(torch.device('cpu'), (64, 96), 'timm')
    assert list(models) == ['NAT-Tiny', 'Swin-T (timm)']
    swin, env = models['Swin-T (timm)']
    with torch.no_grad():
        outs = swin(torch.randn(1, 3, 64, 96))
    assert len(outs) == 4 and outs[-1].numel() == 768 * 2 * 3
    with pytest.raises(SystemExit):
        parse_args(['--nat-kernels', 'triton'])  # CPU: no CUDA kernels


def test_backbone_nat_kernels_share_one_module_with_their_environment():
    from nat_mm.utils.backbone_benchmark import build_models
    from nat_mm.utils.benchmark import environment

    models = build_models(torch.device('cpu'), (64, 96), 'timm',
                          nat_kernels=['triton', 'tiled'])
    (a, env_a), (b, env_b) = models['NAT-Tiny (triton)'], models['NAT-Tiny (tiled)']
    assert a is b and env_a == {'NAT_MM_CUDA_KERNEL': 'triton'}
    os.environ.pop('NAT_MM_CUDA_KERNEL', None)
    with environment(env_b):
        assert os.environ['NAT_MM_CUDA_KERNEL'] == 'tiled'
    assert 'NAT_MM_CUDA_KERNEL' not in os.environ


CHECK = os.path.join(GPU_TOOLS, 'check.sh')
STEPS = ['env', 'tests-triton', 'warm-triton', 'warm-flex', 'capped-build', 'build', 'memcheck',
         'racecheck', 'synccheck', 'initcheck', 'tests-flex', 'capped', 'tests', 'bench:bfloat16',
         'bench:float16', 'backbone', 'flex:bfloat16', 'flex:float16', 'bench:float32']


def test_check_sh_parses_and_documents_every_step():
    assert subprocess.run(['bash', '-n', CHECK]).returncode == 0
    help_text = subprocess.run(['bash', CHECK, '--help'], capture_output=True, text=True).stdout
    for step in STEPS:
        assert f'  {step} ' in help_text, step
    bad = subprocess.run(['bash', CHECK, '--bogus'], capture_output=True, text=True)
    assert bad.returncode == 2 and 'unknown argument' in bad.stderr


def _dry_run(tmp_path, *args, timeout):
    out = tmp_path / 'out'
    env = dict(ENV, OUT=str(out), NAT_MM_CHECK_WORK=str(tmp_path / 'work'))
    proc = subprocess.run(['bash', CHECK, '--cpu-dry-run', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    summary = (out / 'summary.txt').read_text() if (out / 'summary.txt').exists() else ''
    return proc, out, summary


@pytest.mark.slow  # three short Python runs (torch imports): about 30 s here
def test_check_sh_only_runs_the_named_steps(tmp_path):
    proc, out, summary = _dry_run(tmp_path, '--only', 'env', timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    lines = {line.split()[0]: line for line in summary.splitlines() if line.strip()}
    assert lines['env'].split()[1] == 'ok'
    assert 'skipped' in lines['tests'] and 'skipped' in lines['capped']
    assert 'no recommendation' in summary
    assert len(os.listdir(out)) <= 8


@pytest.mark.slow  # the whole dry run: several minutes on 2 cores
def test_check_sh_cpu_dry_run_passes(tmp_path):
    proc, out, summary = _dry_run(tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    status = {line.split()[0]: line.split()[1] for line in summary.splitlines()
              if line[:1].isalpha() and len(line.split()) > 2 and line.split()[2].startswith('rc=')}
    for step in ('env', 'tests', 'tests-triton', 'tests-flex', 'capped-build', 'capped',
                 'sanitize-cases:cpu', 'bench:float32', 'flex:float32', 'backbone'):
        assert status.get(step) == 'ok', (step, summary)
    assert status.get('warm-flex') in ('ok', 'stopped'), summary  # stopped when phase 2 ends
    for step in ('build', 'warm-triton', 'memcheck', 'racecheck', 'synccheck', 'initcheck'):
        assert status.get(step) == 'skipped', (step, summary)
    bench = json.loads((out / 'bench.json').read_text())
    assert {r['backend'] for r in bench['rows']} >= {'nat_mm', 'gather', 'flex', 'flex_tiled'}
    assert '# float32:' in summary and 'auto for float32: no recommendation' in summary
    assert '# backbones:' in summary
    assert len(os.listdir(out)) <= 8

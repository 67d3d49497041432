"""Run many tool command lines, each in its own process, paying the imports once.

``python -m nat_mm.testing.fork_runner CASES.json RESULTS.json [WORKERS]`` imports torch, mmengine,
mmdet, mmseg and nat_mm (the 5-15 s that every ``python tools/X.py`` spends before it looks at
its arguments), then forks one child per case, at most WORKERS at a time. A child does what
``python tools/X.py ARGS`` does from there: ``sys.argv`` and ``sys.path[0]`` as the interpreter
sets them, stdout and stderr to files, the script run as ``__main__`` (its own imports included),
and the exit status the interpreter would give: ``SystemExit``'s code, or a printed traceback and
1 for any other exception.

CASES.json: ``[{"id": ..., "argv": ["tools/test.py", ...], "timeout": seconds}]`` (paths
relative to the repository root, the children's working directory). RESULTS.json: ``{id:
{"returncode", "stdout", "stderr", "seconds"}}``; a child past its timeout is killed (returncode
-9).
"""
import json
import os
import os.path as osp
import signal
import sys
import time
import traceback

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))  # the checkout


def _child(argv, out_path, err_path) -> None:
    """In the forked child: become ``python argv[0] argv[1:]`` and exit with its status."""
    import runpy
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    script = osp.join(ROOT, argv[0])
    sys.argv = [argv[0], *argv[1:]]
    sys.path[0] = osp.dirname(script)
    code = 0
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:  # sys.exit('message'): the interpreter prints it and exits with 1
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_cases(cases, workers: int, tmp_dir: str) -> dict:
    """Fork one child per case (at most ``workers`` at once); return the results by id."""
    pending = list(enumerate(cases))
    running = {}  # pid -> (index, case, start)
    results = {}
    while pending or running:
        while pending and len(running) < workers:
            index, case = pending.pop(0)
            out_path = osp.join(tmp_dir, f'{index}.out')
            err_path = osp.join(tmp_dir, f'{index}.err')
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(case['argv'], out_path, err_path)
            running[pid] = (index, case, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (_, case, start) in list(running.items()):
                if now - start > case.get('timeout', 300):
                    os.kill(child, signal.SIGKILL)
            time.sleep(0.02)
            continue
        index, case, start = running.pop(pid)
        with open(osp.join(tmp_dir, f'{index}.out')) as f_out, \
                open(osp.join(tmp_dir, f'{index}.err')) as f_err:
            results[case['id']] = dict(returncode=os.waitstatus_to_exitcode(status),
                                       stdout=f_out.read(), stderr=f_err.read(),
                                       seconds=round(time.monotonic() - start, 2))
    return results


def main() -> None:
    cases_path, results_path = sys.argv[1:3]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with open(cases_path) as f:
        cases = json.load(f)
    os.chdir(ROOT)
    # What every tool imports first; importing it here once is the point of this runner.
    import matplotlib
    matplotlib.use('Agg')
    import mmdet.models  # noqa: F401
    import mmengine.runner  # noqa: F401
    import mmseg.models  # noqa: F401
    import torch  # noqa: F401

    import nat_mm  # noqa: F401
    tmp_dir = osp.join(osp.dirname(osp.abspath(results_path)), 'tool_runs')
    os.makedirs(tmp_dir, exist_ok=True)
    results = run_cases(cases, workers, tmp_dir)
    with open(results_path, 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()

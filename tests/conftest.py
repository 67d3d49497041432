import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's interpreter (tests/ops/test_triton.py). Triton
    # reads the variable when its modules are first imported, which any test file may cause
    # (torchvision imports torch._dynamo, which imports triton), so it is set before them all.
    os.environ.setdefault('TRITON_INTERPRET', '1')

from hypothesis import settings  # noqa: E402

try:  # the lent GPU machine has no OpenMMLab packages; its kernel tests need none
    from mmengine.registry import DefaultScope
except ImportError:
    DefaultScope = None


# Hypothesis: derandomized by default (a fixed seed, printed in the header, and no example
# database, so a run does not depend on earlier ones); `make test-fuzz` sets NAT_MM_FUZZ=1 to run
# the hypothesis tests unseeded with FUZZ_SCALE times the examples. --hypothesis-seed=N wins.
HYPOTHESIS_SEED = 0
FUZZ = bool(os.environ.get('NAT_MM_FUZZ'))
FUZZ_SCALE = 10 if FUZZ else 1
settings.register_profile('nat_mm-ci', database=None, print_blob=True)
settings.register_profile('nat_mm-fuzz', print_blob=True)
settings.load_profile('nat_mm-fuzz' if FUZZ else 'nat_mm-ci')

# pytest-xdist workers (`make test` runs two) share the cores: each worker's torch would
# otherwise start one OpenMP thread per core, and threads spinning on a core the other worker
# uses slow both down. The tool subprocesses set OMP_NUM_THREADS=1 (nat_mm.testing.tools.ENV).
XDIST_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // XDIST_WORKERS))


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own pytest_configure reads the seed
def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: over 10 s here, or a 6-8 s subprocess run '
                            '(make test-fast skips them)')
    if not FUZZ and getattr(config.option, 'hypothesis_seed', None) is None:
        config.option.hypothesis_seed = str(HYPOTHESIS_SEED)


def pytest_report_header(config):
    seed = getattr(config.option, 'hypothesis_seed', None)
    if seed is None:
        return f'hypothesis: unseeded (random), {FUZZ_SCALE}x examples, profile nat_mm-fuzz'
    return f'hypothesis: seed {seed} (--hypothesis-seed=N to change), profile nat_mm-ci'


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """The tiny demo-layout dataset of nat_mm.testing.tools.write_demo_data (shared by the tool
    tests);
    its COCO files have no ``info`` key, as most converted custom datasets."""
    from nat_mm.testing.tools import write_demo_data
    return write_demo_data(tmp_path_factory.mktemp('demo'), with_info=False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_SESSION_SCOPES = dict(DefaultScope._instance_dict) if DefaultScope is not None else {}


@pytest.fixture(autouse=True)
def _isolated_default_scope():
    """mmengine's default scope is process-wide: a Runner or ``init_default_scope`` in one test
    would decide which registry a later test's ``MODELS.build`` searches (an mmengine Runner
    leaves 'mmengine', whose registry knows none of our backbones), so the outcome would depend
    on the test order, which pytest-xdist changes. Each test ends with the scopes the session
    started with (module fixtures that build a Runner included)."""
    yield
    if DefaultScope is not None:
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(_SESSION_SCOPES)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """The epoch-1 checkpoint of a toy mmengine Runner (nat_mm.testing.runner), once per module."""
    from nat_mm.testing.runner import train_toy_runner
    work_dir = tmp_path_factory.mktemp('runner')
    train_toy_runner(work_dir, max_epochs=1)
    return work_dir / 'epoch_1.pth'

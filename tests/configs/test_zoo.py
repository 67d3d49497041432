"""The model zoo: configs/metafile.yml lists every released config, openmim's loader reads it
through model-index.yml, configs/README.md is generated from it and current, and our measured
FLOPs stay near the papers'."""
import os.path as osp
import subprocess
import sys

import pytest
import yaml

from nat_mm.mm import zoo

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.slow
def test_zoo_is_current():
    """Regenerating configs/metafile.yml and configs/README.md changes nothing (it builds every
    config on the meta device to count its parameters)."""
    proc = subprocess.run([sys.executable, 'tools/make_zoo.py', '--check'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zoo_lists_every_config_and_is_linked():
    configs = zoo.list_configs()
    assert len(configs) == 38 and not any('demo_' in c for c in configs)
    assert list(zoo.load_metafile()) == configs
    with open(osp.join(ROOT, 'configs', 'README.md')) as f:
        readme = f.read()
    for config in configs:
        assert f']({config})' in readme, config
    with open(osp.join(ROOT, 'README.md')) as f:
        assert 'configs/README.md' in f.read()


def test_model_index_finds_every_config():
    """openmim's loader (``modelindex.load``, as ``mim search`` calls it) finds every released
    config through the root model-index.yml, with its collection's paper, our parameters and
    FLOPs, the papers' results and the official weights, and reports no error."""
    import modelindex  # the model-index package: a test dependency (requirements/constraints.txt)
    index = modelindex.load(osp.join(ROOT, 'model-index.yml'))
    assert index.check(silent=True) == []
    by_config = {m.config: m for m in index.models}
    expected = {'configs/' + c: m for c, m in zoo.load_metafile().items()}
    assert set(by_config) == set(expected) == {'configs/' + c for c in zoo.list_configs()}
    assert {c.name for c in index.collections} == {'NAT', 'DiNAT'}
    for config, model in by_config.items():
        ours = expected[config]
        assert osp.isfile(osp.join(ROOT, config)), config
        assert model.name == ours.name and model.in_collection == ours.collection
        assert model.metadata.parameters == ours.params and ours.params > 1e7, config
        assert model.metadata.flops == ours.flops and ours.flops > 1e11, config
        assert model.metadata.data[zoo.PAPER_PARAMETERS] == ours.paper_params_m
        assert {k: v for r in model.results for k, v in r.metrics.items()} == ours.metrics
        assert model.weights == ours.weights and model.weights.startswith('https://'), config
        full = model.full_model  # with its collection's fields, as mim merges them
        assert full.paper['URL'].startswith('https://arxiv.org/abs/'), config
        assert osp.isfile(osp.join(ROOT, 'configs', full.readme)), config


def test_metafile_is_in_make_zoo_layout():
    """configs/metafile.yml is exactly what tools/make_zoo.py writes for its data, so a run
    rewrites only the fields it measures (checked without building models)."""
    with open(zoo.METAFILE) as f:
        text = f.read()
    assert zoo.dump_metafile(zoo.read_metafile()) == text
    assert yaml.safe_load(zoo.dump_metafile(yaml.safe_load(text))) == yaml.safe_load(text)


def test_metafile_keeps_ours_and_the_papers_apart():
    """Ours are exact counts; the papers' are the tables' rounded millions and GFLOPs, and
    every model has the papers' results and the official checkpoint."""
    for config, model in zoo.load_metafile().items():
        assert model.name == osp.splitext(osp.basename(config))[0]
        assert abs(model.params / 1e6 - model.paper_params_m) < 0.01 * model.paper_params_m + 0.6
        assert model.flops % 100_000_000 == 0, config  # rounded to 0.1 GFLOPs
        assert isinstance(model.paper_params_m, int) and isinstance(model.paper_flops_g, int)
        assert model.results and all(isinstance(v, float) for v in model.metrics.values())
        assert model.weights.startswith('https://shi-labs.com/projects/'), config


def test_measured_flops_are_near_the_official_tables():
    """Our FLOPs in configs/metafile.yml (make_zoo.py --measure-flops, i.e. tools/get_flops.py
    at each config's size) are within 1% of the papers'. A check of the data; that the recorded
    FLOPs are what the code counts is test_tools.py's test_get_flops_reproduces_the_papers.
    Mask2Former is left out: its official
    FLOPs are detectron2's analyze_model averaged over validation images, another method."""
    models = zoo.load_metafile()
    measured = {c: m.flops / 1e9 for c, m in models.items() if m.flops is not None}
    compared = [c for c in measured if 'mask2former' not in c]
    assert len(compared) >= 12, sorted(measured)
    for config in compared:
        paper = models[config].paper_flops_g
        assert abs(measured[config] - paper) / paper < 0.01, (config, measured[config], paper)


def _entry(**metadata):
    meta = {zoo.FLOPS_INPUT_SIZE: '1280x800', zoo.PAPER_PARAMETERS: 48, zoo.PAPER_FLOPS: 258}
    meta.update(metadata)
    return {'Name': 'mask_rcnn_nat_tiny_3x', 'In Collection': 'NAT',
            'Config': 'configs/det/mask_rcnn_nat_tiny_3x.py', 'Metadata': meta,
            'Results': [{'Task': 'Object Detection', 'Dataset': 'COCO',
                         'Metrics': {'box AP': 47.7}}]}


def test_load_metafile_reads_one_record_per_config(tmp_path):
    path = tmp_path / 'metafile.yml'
    data = {'Collections': [{'Name': 'NAT'}],
            'Models': [_entry(**{zoo.PARAMETERS: 47540502, zoo.FLOPS: 258_200_000_000})]}
    zoo.write_metafile(data, str(path))
    model = zoo.load_metafile(str(path))['det/mask_rcnn_nat_tiny_3x.py']
    assert (model.params, model.flops, model.flops_shape) == (47540502, 258.2e9, (1280, 800))
    assert (model.paper_params_m, model.paper_flops_g, model.weights) == (48, 258, None)
    assert model.results == (('Object Detection', 'COCO', {'box AP': 47.7}), )
    assert zoo.round_flops(258_163_456_789) == 258_200_000_000


@pytest.mark.parametrize('change,match', [
    (lambda e: e['Metadata'].pop(zoo.PAPER_PARAMETERS), 'Metadata lacks'),
    (lambda e: e.update({'In Collection': 'Swin'}), 'is not one of the Collections'),
    (lambda e: e.update({'Config': 'det/mask_rcnn_nat_tiny_3x.py'}), 'under configs/'),
    (lambda e: e.update({'Name': 'nat_tiny'}), 'config file stem'),
    (lambda e: e.update({'Results': []}), 'no Results'),
    (lambda e: e['Metadata'].update({zoo.FLOPS_INPUT_SIZE: '1280'}), 'HxW'),
], ids=['paper-params', 'collection', 'config', 'name', 'results', 'size'])
def test_load_metafile_names_a_bad_entry(tmp_path, change, match):
    entry = _entry()
    change(entry)
    path = tmp_path / 'metafile.yml'
    zoo.write_metafile({'Collections': [{'Name': 'NAT'}], 'Models': [entry]}, str(path))
    with pytest.raises(ValueError, match=match):
        zoo.load_metafile(str(path))


def test_load_metafile_without_a_metafile(tmp_path):
    with pytest.raises(FileNotFoundError, match='configs/metafile.yml'):
        zoo.load_metafile(str(tmp_path / 'metafile.yml'))

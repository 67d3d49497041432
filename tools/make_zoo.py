"""Write the model zoo, configs/README.md: one row per released config.

Each row comes from the config itself (backbone, arch, ImageNet checkpoint, parameter count of the
built model) and from the small table of official results below (the NAT.md and DiNAT.md tables
of SHI-Labs/Neighborhood-Attention-Transformer: the papers' parameters, FLOPs, box/mask AP or
single-/multi-scale mIoU, and the official trained checkpoint). FLOPs measured here with
tools/get_flops.py are kept in configs/flops.json (``--measure-flops`` writes it; it takes
minutes per model on a CPU), so regenerating the zoo is quick and deterministic.

Examples:
    python tools/make_zoo.py                       # rewrite configs/README.md
    python tools/make_zoo.py --check               # exit 1 if configs/README.md is stale
    python tools/make_zoo.py --measure-flops configs/det/mask_rcnn_dinat_s_tiny_3x.py
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ZOO = osp.join(ROOT, 'configs', 'README.md')
FLOPS_FILE = osp.join(ROOT, 'configs', 'flops.json')

NAT_DET = 'https://shi-labs.com/projects/nat/checkpoints/DET/'
NAT_SEG = 'https://shi-labs.com/projects/nat/checkpoints/SEG/'
DINAT_COCO = 'https://shi-labs.com/projects/dinat/checkpoints/coco/'
DINAT_ADE = 'https://shi-labs.com/projects/dinat/checkpoints/ade20k/'
DINAT_M2F = 'https://shi-labs.com/projects/dinat/checkpoints/m2f/'

# config -> (params M, FLOPs G, metrics, checkpoint): the official tables (detection/{NAT,
# DiNAT}.md, segmentation/{NAT,DiNAT}.md, and DiNAT.md's Mask2Former tables). Metrics are
# (box AP, mask AP) or (mIoU, multi-scale mIoU), and for Mask2Former (PQ, mask AP, mIoU) with
# None where the official table has no number.
OFFICIAL: Dict[str, Tuple[int, int, Tuple[Optional[float], ...], str]] = {
    'det/mask_rcnn_nat_mini_3x.py': (40, 225, (46.5, 41.7), NAT_DET + 'nat_mini_maskrcnn.pth'),
    'det/mask_rcnn_nat_tiny_3x.py': (48, 258, (47.7, 42.6), NAT_DET + 'nat_tiny_maskrcnn.pth'),
    'det/mask_rcnn_nat_small_3x.py': (70, 330, (48.4, 43.2),
                                      NAT_DET + 'nat_small_maskrcnn.pth'),
    'det/cascade_nat_mini_3x.py': (77, 704, (50.3, 43.6),
                                   NAT_DET + 'nat_mini_cascademaskrcnn.pth'),
    'det/cascade_nat_tiny_3x.py': (85, 737, (51.4, 44.5),
                                   NAT_DET + 'nat_tiny_cascademaskrcnn.pth'),
    'det/cascade_nat_small_3x.py': (108, 809, (52.0, 44.9),
                                    NAT_DET + 'nat_small_cascademaskrcnn.pth'),
    'det/cascade_nat_base_3x.py': (147, 931, (52.3, 45.1),
                                   NAT_DET + 'nat_base_cascademaskrcnn.pth'),
    'det/mask_rcnn_dinat_mini_3x.py': (40, 225, (47.2, 42.5),
                                       DINAT_COCO + 'maskrcnn_dinat_mini.pth'),
    'det/mask_rcnn_dinat_tiny_3x.py': (48, 258, (48.6, 43.5),
                                       DINAT_COCO + 'maskrcnn_dinat_tiny.pth'),
    'det/mask_rcnn_dinat_small_3x.py': (70, 330, (49.3, 44.0),
                                        DINAT_COCO + 'maskrcnn_dinat_small.pth'),
    'det/cascade_dinat_mini_3x.py': (77, 704, (51.2, 44.4),
                                     DINAT_COCO + 'cascadedmaskrcnn_dinat_mini.pth'),
    'det/cascade_dinat_tiny_3x.py': (85, 737, (52.2, 45.1),
                                     DINAT_COCO + 'cascadedmaskrcnn_dinat_tiny.pth'),
    'det/cascade_dinat_small_3x.py': (108, 809, (52.9, 45.8),
                                      DINAT_COCO + 'cascadedmaskrcnn_dinat_small.pth'),
    'det/cascade_dinat_base_3x.py': (147, 931, (53.4, 46.2),
                                     DINAT_COCO + 'cascadedmaskrcnn_dinat_base.pth'),
    'det/cascade_dinat_large_3x.py': (258, 1276, (55.3, 47.8),
                                      DINAT_COCO + 'cascadedmaskrcnn_dinat_large.pth'),
    'det/mask_rcnn_dinat_s_tiny_3x.py': (48, 263, (46.6, 42.1),
                                         DINAT_COCO + 'maskrcnn_dinat_s_tiny.pth'),
    'det/mask_rcnn_dinat_s_small_3x.py': (69, 350, (48.6, 43.5),
                                          DINAT_COCO + 'maskrcnn_dinat_s_small.pth'),
    'det/cascade_dinat_s_tiny_3x.py': (86, 742, (51.0, 44.1),
                                       DINAT_COCO + 'cascadedmaskrcnn_dinat_s_tiny.pth'),
    'det/cascade_dinat_s_small_3x.py': (107, 829, (52.3, 45.2),
                                        DINAT_COCO + 'cascadedmaskrcnn_dinat_s_small.pth'),
    'det/cascade_dinat_s_base_3x.py': (145, 966, (52.6, 45.3),
                                       DINAT_COCO + 'cascadedmaskrcnn_dinat_s_base.pth'),
    'det/cascade_dinat_s_large_3x.py': (253, 1357, (54.8, 47.2),
                                        DINAT_COCO + 'cascadedmaskrcnn_dinat_s_large.pth'),
    'seg/upernet_nat_mini_160k.py': (50, 900, (45.1, 46.4), NAT_SEG + 'nat_mini_upernet.pth'),
    'seg/upernet_nat_tiny_160k.py': (58, 934, (47.1, 48.4), NAT_SEG + 'nat_tiny_upernet.pth'),
    'seg/upernet_nat_small_160k.py': (82, 1010, (48.0, 49.5),
                                      NAT_SEG + 'nat_small_upernet.pth'),
    'seg/upernet_nat_base_160k.py': (123, 1137, (48.5, 49.7), NAT_SEG + 'nat_base_upernet.pth'),
    'seg/upernet_dinat_mini_160k.py': (50, 900, (45.8, 47.2),
                                       DINAT_ADE + 'upernet_dinat_mini.pth'),
    'seg/upernet_dinat_tiny_160k.py': (58, 934, (47.8, 48.8),
                                       DINAT_ADE + 'upernet_dinat_tiny.pth'),
    'seg/upernet_dinat_small_160k.py': (82, 1010, (48.9, 49.9),
                                        DINAT_ADE + 'upernet_dinat_small.pth'),
    'seg/upernet_dinat_base_160k.py': (123, 1137, (49.6, 50.4),
                                       DINAT_ADE + 'upernet_dinat_base.pth'),
    'seg/upernet_dinat_large_160k.py': (238, 2335, (53.5, 54.6),
                                        DINAT_ADE + 'upernet_dinat_large.pth'),
    'seg/upernet_dinat_s_tiny_160k.py': (60, 941, (46.0, 47.4),
                                         DINAT_ADE + 'upernet_dinat_s_tiny.pth'),
    'seg/upernet_dinat_s_small_160k.py': (81, 1030, (48.6, 49.9),
                                          DINAT_ADE + 'upernet_dinat_s_small.pth'),
    'seg/upernet_dinat_s_base_160k.py': (121, 1173, (49.4, 50.2),
                                         DINAT_ADE + 'upernet_dinat_s_base.pth'),
    'seg/upernet_dinat_s_large_160k.py': (234, 2466, (53.4, 54.6),
                                          DINAT_ADE + 'upernet_dinat_s_large.pth'),
    'det/mask2former_dinat_large_coco_panoptic.py': (
        220, 522, (58.5, 49.2, 68.3), DINAT_M2F + 'mask2former_dinat_large_coco_panoptic.pth'),
    'det/mask2former_dinat_large_coco_instance.py': (
        220, 522, (None, 50.8, None), DINAT_M2F + 'mask2former_dinat_large_coco_instance.pth'),
    'seg/mask2former_dinat_large_ade20k_160k.py': (
        220, 518, (None, None, 58.1), DINAT_M2F + 'mask2former_dinat_large_ade20k_semantic.pth'),
    'seg/mask2former_dinat_large_cityscapes_90k.py': (
        220, 509, (None, None, 84.5),
        DINAT_M2F + 'mask2former_dinat_large_cityscapes_semantic.pth'),
}

# The input size (H, W) of the papers' FLOPs: 1280x800 (COCO), 512x2048 (ADE20K); the two Large
# UPerNets were counted at 640x2560.
FLOPS_SHAPES = {'det': (1280, 800), 'seg': (512, 2048)}
FLOPS_SHAPE_OVERRIDES = {
    'seg/upernet_dinat_large_160k.py': (640, 2560),
    'seg/upernet_dinat_s_large_160k.py': (640, 2560),
    # Mask2Former: the official FLOPs come from detectron2's analyze_model, averaged over
    # validation images; we count at the test-time input size of each dataset.
    'det/mask2former_dinat_large_coco_panoptic.py': (800, 1333),
    'det/mask2former_dinat_large_coco_instance.py': (800, 1333),
    'seg/mask2former_dinat_large_ade20k_160k.py': (640, 640),
    'seg/mask2former_dinat_large_cityscapes_90k.py': (1024, 2048),
}

HEADS = {'mask': 'Mask R-CNN 3x', 'cascade': 'Cascade Mask R-CNN 3x',
         'upernet': 'UPerNet 160k', 'mask2former': 'Mask2Former'}
# Mask2Former's task and schedule, from the config name
M2F_TASKS = {'coco_panoptic': 'COCO panoptic 100ep', 'coco_instance': 'COCO instance 100ep',
             'ade20k_160k': 'ADE20K semantic 160k', 'cityscapes_90k': 'Cityscapes semantic 90k'}
BACKBONES = {'NAT': 'NAT', 'DiNAT': 'DiNAT', 'DiNAT_s': 'DiNAT<sub>s</sub>'}


def list_configs() -> List[str]:
    """Released configs, relative to configs/ (the demo configs are left out)."""
    paths = glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))
    rel = [osp.relpath(p, osp.join(ROOT, 'configs')) for p in paths]
    return sorted(p for p in rel if not osp.basename(p).startswith('demo_'))


def flops_shape(config: str) -> Tuple[int, int]:
    return FLOPS_SHAPE_OVERRIDES.get(config, FLOPS_SHAPES[config.split('/')[0]])


def count_params(cfg) -> int:
    """Parameters of the config's model, built on the meta device (no memory, no init)."""
    import torch
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    cfg.model.backbone.init_cfg = None
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    return sum(p.numel() for p in model.parameters())


def load_config(config: str):
    import nat_mm  # noqa: F401  registers the backbones
    from nat_mm.mm.cli import load_config as load_user_config
    return load_user_config(osp.join(ROOT, 'configs', config))


def _link(url: Optional[str], text: str) -> str:
    return f'[{text}]({url})' if url else '-'


def row(config: str, flops: Dict[str, float]) -> str:
    cfg = load_config(config)
    backbone = cfg.model.backbone
    head = HEADS[osp.basename(config).split('_')[0]]
    if head == 'Mask2Former':
        head += ' ' + next(v for k, v in M2F_TASKS.items() if config.endswith(k + '.py'))
    name = f'{BACKBONES[backbone.type]}-{backbone.arch.capitalize()}'
    init = backbone.get('init_cfg') or {}
    pretrain = init.get('checkpoint')
    pretrain_name = 'IN-22k' if pretrain and 'imagenet22k' in pretrain else 'IN-1k'
    params = count_params(cfg) / 1e6
    paper_params, paper_flops, metrics, trained = OFFICIAL[config]
    shape = flops_shape(config)
    ours = flops.get(config)
    flops_text = f'{paper_flops} / {ours:.1f}' if ours is not None else f'{paper_flops} / -'
    return (f'| [{osp.basename(config)}]({config}) | {name} | {head} | '
            f'{paper_params} / {params:.1f} | {flops_text} ({shape[0]}x{shape[1]}) | '
            f'{" | ".join("-" if m is None else str(m) for m in metrics)} | '
            f'{_link(pretrain, pretrain_name)} | '
            f'{_link(trained, "official")} |')


HEADER = """# Model zoo

Generated by `python tools/make_zoo.py` from the configs and the official NAT/DiNAT results
(SHI-Labs/Neighborhood-Attention-Transformer, `detection/{NAT,DiNAT}.md` and
`segmentation/{NAT,DiNAT}.md`); do not edit by hand (`tests/test_zoo.py` checks it is current).

- **Params (M)**: the official table / the model this config builds (counted here).
- **FLOPs (G)**: the official table / `tools/get_flops.py CONFIG --shape H W` here (measured
  values are kept in `configs/flops.json`; `-` where not measured yet), at the input size given.
- **AP / mIoU**: the official results of the official checkpoints: COCO val box AP and mask AP
  (detection), ADE20K val single-scale mIoU and multi-scale mIoU (`tools/test.py CONFIG CKPT
  --tta` runs the same multi-scale + flip test as mmseg 0.x's `--aug-test`).
- **Pre-training**: the ImageNet checkpoint the config starts from (`model.backbone.init_cfg`).
- **Trained**: the official COCO / ADE20K checkpoint (written by mmcv 1.x; `tools/test.py CONFIG
  URL` loads it).

"""


METRICS = {'det': ('box AP', 'mask AP'), 'seg': ('mIoU', 'mIoU (ms)'),
           'm2f': ('PQ', 'mask AP', 'mIoU')}


M2F_TITLE = '''## Mask2Former (COCO: mmdet; ADE20K, Cityscapes: mmseg)

Official results of DiNAT.md's Mask2Former tables (detectron2 runs): PQ, mask AP and mIoU of
COCO panoptic, mask AP of COCO instance, multi-scale mIoU of ADE20K and Cityscapes semantic;
the official FLOPs were counted by detectron2's analyze_model over validation images, ours at
the input size given. Only the configs are checked
here (parameters, one CPU training step with a shrunk backbone, the checkpoint converter);
no real checkpoint was loaded and nothing was trained at scale. The official checkpoints are
detectron2 files: convert them with `tools/convert_checkpoint.py SRC DST --format
d2-mask2former` (`--head decode_head` for ADE20K and Cityscapes).'''


def table(rows: List[str], task: str) -> str:
    metrics = METRICS[task]
    head = (f'| Config | Backbone | Model | Params (M) | FLOPs (G) | {" | ".join(metrics)} '
            '| Pre-training | Trained |\n|' + '---|' * (7 + len(metrics)) + '\n')
    return head + '\n'.join(rows) + '\n'


def render(configs: List[str], flops: Dict[str, float]) -> str:
    text = HEADER
    m2f = [c for c in configs if osp.basename(c).startswith('mask2former_')]
    for task, title in (('det', '## COCO (mmdet)'), ('seg', '## ADE20K (mmseg)')):
        rows = [row(c, flops) for c in configs if c.startswith(task + '/') and c not in m2f]
        text += f'{title}\n\n{table(rows, task)}\n'
    if m2f:
        rows = [row(c, flops) for c in m2f]
        text += f'{M2F_TITLE}\n\n{table(rows, "m2f")}\n'
    return text.rstrip('\n') + '\n'


def read_flops() -> Dict[str, float]:
    if not osp.exists(FLOPS_FILE):
        return {}
    with open(FLOPS_FILE) as f:
        return json.load(f)


def measure_flops(configs: List[str]) -> None:
    """Run tools/get_flops.py's counter on ``configs`` and store the results (GFLOPs)."""
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    import get_flops
    flops = read_flops()
    for config in configs:
        config = osp.relpath(osp.abspath(config), osp.join(ROOT, 'configs')) \
            if osp.exists(config) else config
        value, _ = get_flops.count(load_config(config), flops_shape(config))
        flops[config] = round(value / 1e9, 1)
        print(f'{config}: {flops[config]}G at {flops_shape(config)}', flush=True)
        with open(FLOPS_FILE, 'w') as f:
            json.dump(dict(sorted(flops.items())), f, indent=1)
            f.write('\n')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Write the model zoo (configs/README.md)')
    parser.add_argument('--check', action='store_true',
                        help='do not write; exit 1 when configs/README.md is not current')
    parser.add_argument('--measure-flops', nargs='+', metavar='CONFIG',
                        help='count the FLOPs of these configs first (slow) and keep them in '
                        'configs/flops.json')
    args = parser.parse_args(argv)
    configs = list_configs()
    unknown = sorted(set(configs) - set(OFFICIAL))
    if unknown:
        from nat_mm.mm.cli import ConfigError
        raise ConfigError(f'no official results for {unknown}: add them to OFFICIAL in '
                          'tools/make_zoo.py')
    if args.measure_flops:
        measure_flops(args.measure_flops)
    text = render(configs, read_flops())
    if args.check:
        with open(ZOO) as f:
            current = f.read()
        if current != text:
            print('configs/README.md is not current: run python tools/make_zoo.py')
            return 1
        return 0
    with open(ZOO, 'w') as f:
        f.write(text)
    print(f'wrote {ZOO} ({len(configs)} configs)')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    from nat_mm.mm.cli import run
    run(main)

# Mask2Former DiNAT-L, COCO instance segmentation, 100 epochs (official: 50.8
# mask AP): mmdet's Mask2Former instance recipe (LSJ 1024x1024, scale
# 0.1-2.0, batch 16, the detectron2 solver) with the official YAML
# (mask2former/configs/coco/instance-segmentation/dinat/
# maskformer2_dinat_large_IN21k_384_bs16_100ep.yaml): DiNAT-L backbone, 200
# queries, 737,500 iterations with steps at 655,556 and 710,184, AMP off.
# Differences from detectron2 that can change results: none known. mmdet's
# LSJ (RandomResize 0.1-2.0 + RandomCrop + BatchFixedSizePad to 1024) is
# detectron2's ResizeScale + FixedSizeCrop, and inference is the same (top
# 100 query-class pairs, class score x mean mask probability); this was not
# compared on real data.
_base_ = [
    'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
    './_base_/mask2former_dinat_large.py'
]
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, **_base_.dinat_large_m2f),
    panoptic_head=dict(
        in_channels=_base_.dinat_large_m2f_channels, num_queries=200))
optim_wrapper = _base_.dinat_large_m2f_optim_wrapper

max_iters = 737500
param_scheduler = dict(end=max_iters, milestones=[655556, 710184])
interval = 5000
dynamic_intervals = [(max_iters // interval * interval + 1, max_iters)]
train_cfg = dict(
    max_iters=max_iters,
    val_interval=interval,
    dynamic_intervals=dynamic_intervals)

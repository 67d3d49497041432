# Mask R-CNN with a NAT backbone: mmdet's Mask R-CNN R-50-FPN with the backbone
# swapped. Variants set `arch`, `drop_path_rate`, the checkpoint and
# `neck.in_channels`.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

# Registers the NAT, DiNAT and DiNAT_s backbones in mmdet's MODELS (and
# LegacyCheckpointHook in mmengine's HOOKS), so a config that inherits only
# this model file builds.
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='NAT',
        arch='tiny',
        kernel_size=7,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512]))

_base_ = [
    './_base_/cascade_mask_rcnn_nat_fpn.py',
    './_base_/coco_instance_ms_crop_3x.py'
]

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

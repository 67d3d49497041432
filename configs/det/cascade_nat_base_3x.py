_base_ = [
    './_base_/cascade_mask_rcnn_nat_fpn.py',
    './_base_/coco_instance_ms_crop_3x.py'
]

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(
            type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

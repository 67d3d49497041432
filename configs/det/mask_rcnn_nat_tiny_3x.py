_base_ = ['./_base_/mask_rcnn_nat_fpn.py', './_base_/coco_instance_ms_crop_3x.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

_base_ = './mask_rcnn_nat_tiny_3x.py'

# DiNAT_s-T (official config): Swin's layout with NA/DiNA layers, MLP ratio 4,
# detection dilations [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7], [1, 3]] (the
# 'det' preset), drop path 0.2.
model = dict(
    backbone=dict(
        type='DiNAT_s',
        arch='tiny',
        task='det',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

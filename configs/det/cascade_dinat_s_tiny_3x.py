_base_ = './cascade_nat_tiny_3x.py'

# DiNAT_s-T (official config): Swin's layout with NA/DiNA layers, MLP ratio 4,
# the 'det' dilation preset, drop path 0.3, lr 1e-4.
model = dict(
    backbone=dict(
        type='DiNAT_s',
        arch='tiny',
        task='det',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

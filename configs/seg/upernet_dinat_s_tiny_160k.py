_base_ = './upernet_nat_tiny_160k.py'

# DiNAT_s-T (official config): Swin's layout with NA/DiNA layers, MLP ratio 4,
# segmentation dilations [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4], [1, 2]] (the
# 'seg' preset), drop path 0.3.
model = dict(
    backbone=dict(
        type='DiNAT_s',
        arch='tiny',
        task='seg',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

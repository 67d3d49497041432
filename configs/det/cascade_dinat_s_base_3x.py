_base_ = './cascade_dinat_s_tiny_3x.py'

# DiNAT_s-B (official config): drop path 0.6, lr 7.5e-5.
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=0.000075))

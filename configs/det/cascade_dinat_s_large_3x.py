_base_ = './cascade_dinat_s_tiny_3x.py'

# DiNAT_s-L (official config): ImageNet-22k checkpoint, drop path 0.6, lr 5e-5,
# fp16 kept (unlike DiNAT-L, the official DiNAT_s-L config trains in fp16).
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(optimizer=dict(lr=0.00005))

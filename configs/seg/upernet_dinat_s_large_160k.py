_base_ = './upernet_dinat_s_tiny_160k.py'

# DiNAT_s-L (official config): ImageNet-22k checkpoint, drop path 0.3, its own
# level-0/1/2 dilations (written out below, not the 'seg' preset), fp16 kept.
# The official file is named `..._640x640_160k_ade20k.py`, but its content
# inherits the 512x512 ADE20K dataset base (crop 512x512, test scale
# 2048x512); we follow the content: 512x512 crops, as every other UPerNet here.
model = dict(
    backbone=dict(
        arch='large',
        dilations=[[1, 20], [1, 10],
                   [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5],
                   [1, 2]],
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))

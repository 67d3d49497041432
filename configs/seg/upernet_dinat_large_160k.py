_base_ = './upernet_dinat_base_160k.py'

# DiNAT-L (official config): ImageNet-22k checkpoint, no layer scale (the
# 'large' arch), drop path 0.3, its own level-0/1/2 dilations (written out
# below, not the 'seg' preset), lr 6e-5, and no fp16: the official file
# comments its Fp16OptimizerHook out, so this trains in fp32.
# The official file is named `..._640x640_160k_ade20k.py`, but its content
# inherits the 512x512 ADE20K dataset base (crop 512x512, test scale
# 2048x512); we follow the content: 512x512 crops, as every other UPerNet here.
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        dilations=[[1, 20, 1], [1, 5, 1, 10],
                   [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5],
                   [1, 2, 1, 2, 1]],
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

_base_ = './cascade_dinat_base_3x.py'

# DiNAT-L (official config): ImageNet-22k checkpoint, no layer scale (the
# 'large' arch), drop path 0.6 and lr 7.5e-5 as DiNAT-B, and no fp16: the
# official file comments its Fp16OptimizerHook out ("No mixed precision with
# float16 in DiNAT-L"), so this trains in fp32 with a plain OptimWrapper.
model = dict(
    backbone=dict(
        arch='large',
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.000075, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

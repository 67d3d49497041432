_base_ = './upernet_dinat_s_tiny_160k.py'

# DiNAT_s-S (official config): drop path 0.3 as DiNAT_s-T.
model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_small_in1k_224.pth')))

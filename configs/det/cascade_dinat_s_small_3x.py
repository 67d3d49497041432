_base_ = './cascade_dinat_s_tiny_3x.py'

# DiNAT_s-S (official config): drop path 0.5.
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_small_in1k_224.pth')))

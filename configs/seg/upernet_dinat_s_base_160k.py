_base_ = './upernet_dinat_s_tiny_160k.py'

# DiNAT_s-B (official config): drop path 0.3 as DiNAT_s-T.
model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

_base_ = ['./_base_/upernet_nat.py', './_base_/ade20k_160k.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(
            type='Pretrained', checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

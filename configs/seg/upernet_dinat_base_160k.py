_base_ = './upernet_nat_base_160k.py'

model = dict(
    backbone=dict(
        type='DiNAT',
        task='seg',
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth')))

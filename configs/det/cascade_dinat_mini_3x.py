_base_ = './cascade_nat_mini_3x.py'

model = dict(
    backbone=dict(
        type='DiNAT',
        task='det',
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth')))

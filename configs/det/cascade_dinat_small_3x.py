_base_ = './cascade_nat_small_3x.py'

# DiNAT-S (paper and official config): no layer scale (the DiNAT 'small' arch
# default) and drop path 0.5 instead of NAT-S's 0.3.
model = dict(
    backbone=dict(
        type='DiNAT',
        task='det',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth')))

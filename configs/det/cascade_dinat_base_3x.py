_base_ = './cascade_nat_base_3x.py'

# DiNAT-B (official config): drop path 0.6 and lr 7.5e-5 instead of NAT-B's
# 0.5 and 1e-4; layer scale 1e-5 as NAT-B.
model = dict(
    backbone=dict(
        type='DiNAT',
        task='det',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth')))
optim_wrapper = dict(optimizer=dict(lr=0.000075))

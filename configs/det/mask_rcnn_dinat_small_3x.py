_base_ = './mask_rcnn_nat_small_3x.py'

# DiNAT-S has no layer scale (the DiNAT 'small' arch default).
model = dict(
    backbone=dict(
        type='DiNAT',
        task='det',
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth')))

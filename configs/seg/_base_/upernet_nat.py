# UPerNet with a NAT backbone: mmseg's UPerNet (Swin) model with the backbone
# swapped, 150 ADE20K classes and the FCN auxiliary head on level 2 (4C
# channels, loss weight 0.4). Variants set `arch`, `drop_path_rate`, the
# checkpoint and the heads' `in_channels`.
_base_ = 'mmseg::_base_/models/upernet_swin.py'

# Registers the NAT, DiNAT and DiNAT_s backbones in mmseg's MODELS (and
# LegacyCheckpointHook in mmengine's HOOKS), so a config that inherits only
# this model file builds.
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

model = dict(
    # pad training batches to the 512x512 ADE20K crops (test: whole images)
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        _delete_=True,
        type='NAT',
        arch='tiny',
        kernel_size=7,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, in_index=2, num_classes=150))

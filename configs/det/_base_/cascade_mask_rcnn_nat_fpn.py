# Cascade Mask R-CNN with a NAT backbone: mmdet's Cascade Mask R-CNN R-50-FPN
# with the backbone swapped and the three bbox heads replaced by the
# 4conv1fc GIoU heads of mmdet's ConvNeXt cascade recipe (as NAT/DiNAT do).
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'

# Registers the NAT, DiNAT and DiNAT_s backbones in mmdet's MODELS (and
# LegacyCheckpointHook in mmengine's HOOKS), so a config that inherits only
# this model file builds.
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='NAT',
        arch='tiny',
        kernel_size=7,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=target_stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        # one head per stage, with the stage's regression target stds
        for target_stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                            [0.033, 0.033, 0.067, 0.067])
    ]))

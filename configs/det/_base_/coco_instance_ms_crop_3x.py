# The NAT/DiNAT detection recipe (3x, COCO instance segmentation), in mmdet 3.x
# terms: DETR-style multi-scale resize/crop, AdamW with no weight decay on the
# relative positional biases (`rpb`) and norms, 500 warm-up iterations and
# steps at epochs 27 and 33 of 36, 16 images per batch (8 GPUs x 2), fp16.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

# No custom_imports here: the model files (./mask_rcnn_nat_fpn.py ...) carry
# it, and mmengine refuses a key that two bases of one config both set.

# augmentation strategy originates from DETR / Sparse R-CNN
multi_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333),
                (608, 1333), (640, 1333), (672, 1333), (704, 1333),
                (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(
                    type='RandomChoiceResize',
                    scales=multi_scales,
                    keep_ratio=True)
            ],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(400, 1333), (500, 1333), (600, 1333)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(
                    type='RandomChoiceResize',
                    scales=multi_scales,
                    keep_ratio=True)
            ],
        ]),
    dict(type='PackDetInputs')
]
# Data under data/coco/ (mmdet's base); 2 images per GPU x 8 GPUs = 16.
# Test: resize to 1333x800 (mmdet's base test pipeline).
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]

# fp16 as in the official recipe. AmpOptimWrapper needs CUDA: tools/train.py
# falls back to OptimWrapper (fp32) with a warning on machines without it.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=0.0001,
        betas=(0.9, 0.999),
        weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

auto_scale_lr = dict(enable=False, base_batch_size=16)

# The NAT/DiNAT segmentation recipe (ADE20K, 512x512 crops, 160k iterations):
# AdamW lr 6e-5, wd 0.01, no weight decay on the relative positional biases
# (`rpb`) and norms, linear warm-up over 1500 iterations from 1e-6 then poly
# (power 1) decay, 16 images per batch (8 GPUs x 2), fp16, whole-image test.
# Multi-scale + flip test (the papers' "mIoU (multi-scale)"): `tools/test.py
# --tta`, with the `tta_pipeline` below and mmseg's `tta_model`.
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]

# No custom_imports here: the model file (./upernet_nat.py) carries it, and
# mmengine refuses a key that two bases of one config both set.

# Data under data/ade/ADEChallengeData2016, 512x512 crops (mmseg's base); the
# model file pads training batches to that size and tests on whole images.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# fp16 as in the official recipe. AmpOptimWrapper needs CUDA: tools/train.py
# falls back to OptimWrapper (fp32) with a warning on machines without it.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=160000,
        by_epoch=False)
]

# The papers' multi-scale test is mmseg 0.x's `--aug-test`: MultiScaleFlipAug
# with img_scale=(2048, 512) times the ratios 0.5-1.75, each with and without
# flip, and Resize(keep_ratio=True), i.e. each image is rescaled to fit
# (2048r, 512r): scale factor min(2048r / long edge, 512r / short edge). mmseg
# 1.x's own ADE20K tta_pipeline instead multiplies the image's own size by r
# (`scale_factor=r`), which is a different test; here `scale` restores the 0.x
# rule (mmcv 2's Resize with `scale` and keep_ratio calls the same
# mmcv.imrescale as mmcv 1.x; tests/tools/test_tta.py checks the sizes).
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(int(2048 * r), int(512 * r)),
                     keep_ratio=True) for r in img_ratios
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')]
        ])
]

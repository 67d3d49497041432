# Mask2Former DiNAT-L, ADE20K semantic, 160k iterations (official: 58.1 mIoU
# multi-scale): mmseg's Mask2Former Swin-L ADE20K config (640x640 crops from
# short sides 320-1280 (x0.1 steps, max 2560), photometric distortion, flip,
# 100 queries, batch 16, poly 0.9 decay, whole-image test at short side 640)
# with the official YAML (mask2former/configs/ade20k/semantic-segmentation/
# dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml): DiNAT-L backbone,
# AMP off, and the detectron2 solver (../det/_base_/mask2former_dinat_large.py).
# Differences from mmseg's recipe that change results, set to detectron2's:
# - crops: the YAML sets SINGLE_CATEGORY_MAX_AREA 1.0 (any crop); mmseg's
#   config retries crops where one class covers > 75% (cat_max_ratio=0.75);
# - multi-scale test (`tools/test.py --tta`): detectron2 resizes the short
#   side to 320..1120 (640 x 0.5..1.75) + flip; mmseg's ADE20K tta_pipeline
#   multiplies the image's own size instead (`scale_factor=r`).
_base_ = [
    'mmseg::mask2former/'
    'mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py',
    './_base_/mask2former_dinat_large.py'
]
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, **_base_.dinat_large_m2f),
    decode_head=dict(in_channels=_base_.dinat_large_m2f_channels))
optim_wrapper = dict(_delete_=True, **_base_.dinat_large_m2f_optim_wrapper)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomChoiceResize',
        scales=[int(x * 0.1 * 640) for x in range(5, 21)],
        resize_type='ResizeShortestEdge',
        max_size=2560),
    dict(type='RandomCrop', crop_size=(640, 640), cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

# detectron2's TEST.AUG: short side 640 * r (mmcv's rescale to fit
# (2560 r, 640 r) gives that for every ADE20K aspect ratio), then flip.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(int(2560 * r), int(640 * r)),
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

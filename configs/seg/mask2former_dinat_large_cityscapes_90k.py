# Mask2Former DiNAT-L, Cityscapes semantic, 90k iterations (official: 84.5
# mIoU multi-scale): mmseg's Mask2Former Swin-L Cityscapes config (512x1024
# crops from short sides 512-2048 (x0.1 steps, max 4096), photometric
# distortion, flip, 100 queries, batch 16, poly 0.9 decay, whole-image test at
# 1024x2048) with the official YAML (mask2former/configs/cityscapes/
# semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_90k.yaml):
# DiNAT-L backbone, 100 queries, AMP off, and the detectron2 solver
# (../det/_base_/mask2former_dinat_large.py).
# Differences from mmseg's recipe that change results, set to detectron2's:
# - crops: detectron2's default SINGLE_CATEGORY_MAX_AREA 1.0 (any crop);
#   mmseg's config retries crops where one class covers > 75%;
# - multi-scale test (`tools/test.py --tta`): detectron2 resizes the short
#   side to 512..1792 (1024 x 0.5..1.75) + flip; mmseg's Cityscapes
#   tta_pipeline multiplies the image's own size (the same for 1024x2048
#   images, so it is kept).
_base_ = [
    'mmseg::mask2former/'
    'mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py',
    './_base_/mask2former_dinat_large.py'
]
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, **_base_.dinat_large_m2f),
    decode_head=dict(in_channels=_base_.dinat_large_m2f_channels))
optim_wrapper = dict(_delete_=True, **_base_.dinat_large_m2f_optim_wrapper)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomChoiceResize',
        scales=[int(1024 * x * 0.1) for x in range(5, 21)],
        resize_type='ResizeShortestEdge',
        max_size=4096),
    dict(type='RandomCrop', crop_size=(512, 1024), cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

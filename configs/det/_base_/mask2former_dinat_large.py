# DiNAT-L for Mask2Former, shared by the COCO (mmdet) and ADE20K / Cityscapes
# (mmseg) configs. It holds variables only, no `model`/`optim_wrapper`, so a
# config can list it next to mmdet's or mmseg's own Mask2Former base:
#   _base_ = ['mmdet::mask2former/...py', './_base_/mask2former_dinat_large.py']
#   model = dict(backbone=dict(_delete_=True, **_base_.dinat_large_m2f), ...)
#
# Backbone as the official detectron2 YAMLs set it (SHI-Labs/
# Neighborhood-Attention-Transformer, mask2former/configs/*/dinat/*.yaml, the
# same in all of them): DiNAT-L, 11x11 kernel, its own dilations, drop path
# 0.3, ImageNet-22k weights. The YAMLs' WEIGHTS is "dinat_large_in22k_224.pkl";
# the 11x11 model starts from the kernel-interpolated checkpoint of DiNAT.md
# (the 7x7 one with its rpb tables resized bicubically; loading the 7x7 file
# here does the same interpolation on the fly, see nat_mm.mm.interpolate_rpb).
# Registers DiNAT in mmdet's and mmseg's MODELS, so a config that inherits
# only mmdet's/mmseg's Mask2Former and this file builds.
custom_imports = dict(imports=['nat_mm'], allow_failed_imports=False)

dinat_large_m2f = dict(
    type='DiNAT',
    arch='large',
    kernel_size=11,
    dilations=[[1, 14, 1], [1, 4, 1, 7],
               [1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3],
               [1, 1, 1, 1, 1]],
    drop_path_rate=0.3,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224_11x11interp.pth'))
dinat_large_m2f_channels = [192, 384, 768, 1536]

# Solver of Mask2Former's detectron2 train_net.py (which the official runs
# used unchanged): AdamW lr 1e-4, wd 0.05, backbone lr x0.1, no decay on norm
# layers and on the nn.Embedding query_feat / query_embed / level_embed, full
# model grad-norm clipping at 0.01, fp32 (the DiNAT YAMLs turn AMP off).
# mmengine applies norm_decay_mult only to parameters no custom key matches,
# so the backbone norms get their own keys (as mmdet's Swin configs do).
# Not exempt, as in detectron2: DiNAT's `rpb` (train_net.py exempts only
# Swin's relative_position_bias_table / absolute_pos_embed) and the pixel
# decoder's level embedding (an nn.Parameter there, `level_encoding` here).
_backbone_norm = dict(lr_mult=0.1, decay_mult=0.0)
_embed = dict(lr_mult=1.0, decay_mult=0.0)
dinat_large_m2f_custom_keys = {
    'backbone': dict(lr_mult=0.1, decay_mult=1.0),
    'backbone.patch_embed.norm': _backbone_norm,
    'backbone.norm': _backbone_norm,  # the output norms norm0..norm3
    'query_embed': _embed,
    'query_feat': _embed,
    'level_embed': _embed,
}
dinat_large_m2f_custom_keys.update({
    f'backbone.levels.{i}.blocks.{j}.norm': _backbone_norm
    for i, depth in enumerate((3, 4, 18, 5)) for j in range(depth)
})
dinat_large_m2f_custom_keys.update({
    f'backbone.levels.{i}.downsample.norm': _backbone_norm for i in range(3)
})
dinat_large_m2f_optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0001, weight_decay=0.05, eps=1e-8,
        betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(
        custom_keys=dinat_large_m2f_custom_keys, norm_decay_mult=0.0))

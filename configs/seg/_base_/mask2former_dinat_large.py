# DiNAT-L backbone and detectron2 solver for Mask2Former (variables only):
# the same file the COCO configs use.
_base_ = ['../../det/_base_/mask2former_dinat_large.py']

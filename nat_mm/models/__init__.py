"""NAT, DiNAT and DiNAT_s backbones, their layers and the checkpoint key conversion (torch and
timm only)."""
from .layers import NATLayer, NeighborhoodAttention2D
from .backbone import NABackbone
from .dinat_s import DiNAT_s, DiNATsBlock, PatchEmbed, PatchMerging
from .nat import NAT, ConvDownsampler, ConvTokenizer, DiNAT, NATBlock

__all__ = [
    'NeighborhoodAttention2D', 'NATLayer', 'NABackbone', 'ConvTokenizer', 'ConvDownsampler',
    'NATBlock', 'NAT', 'DiNAT', 'PatchEmbed', 'PatchMerging', 'DiNATsBlock', 'DiNAT_s'
]

"""NAT and DiNAT backbones and their layers (torch and timm only)."""
from .layers import NATLayer, NeighborhoodAttention2D
from .nat import NAT, ConvDownsampler, ConvTokenizer, DiNAT, NATBlock

__all__ = [
    'NeighborhoodAttention2D', 'NATLayer', 'ConvTokenizer', 'ConvDownsampler', 'NATBlock', 'NAT',
    'DiNAT'
]

"""The official NAT, DiNAT and DiNAT_s architectures as the tests check them: each preset's
facts and the state-dict names and shapes of the official checkpoints, written out from the
official code's naming rules (SHI-Labs/Neighborhood-Attention-Transformer, docs/design.md
section 5) independently of the models' ``arch_settings``, and random state dicts in the official
classification layout.

Example:
    >>> from nat_mm.testing.official import NAT_OFFICIAL, nat_official_shapes
    >>> shapes = nat_official_shapes(**NAT_OFFICIAL[('NAT', 'tiny')])
    >>> shapes['levels.2.blocks.0.attn.rpb']
    (8, 13, 13)
"""
import torch

__all__ = ['NAT_OFFICIAL', 'DINAT_S_OFFICIAL', 'nat_official_shapes', 'dinat_s_official_shapes',
           'official_cls_state_dict', 'assert_backbone_loaded']

# (class, arch) -> embed dims, depths, heads, MLP ratio, layer scale of the official NAT / DiNAT.
NAT_OFFICIAL = {
    ('NAT', 'mini'): dict(C=64, depths=(3, 4, 6, 5), heads=(2, 4, 8, 16), mlp=3, ls=False),
    ('NAT', 'tiny'): dict(C=64, depths=(3, 4, 18, 5), heads=(2, 4, 8, 16), mlp=3, ls=False),
    ('NAT', 'small'): dict(C=96, depths=(3, 4, 18, 5), heads=(3, 6, 12, 24), mlp=2, ls=True),
    ('NAT', 'base'): dict(C=128, depths=(3, 4, 18, 5), heads=(4, 8, 16, 32), mlp=2, ls=True),
    ('DiNAT', 'mini'): dict(C=64, depths=(3, 4, 6, 5), heads=(2, 4, 8, 16), mlp=3, ls=False),
    ('DiNAT', 'tiny'): dict(C=64, depths=(3, 4, 18, 5), heads=(2, 4, 8, 16), mlp=3, ls=False),
    ('DiNAT', 'small'): dict(C=96, depths=(3, 4, 18, 5), heads=(3, 6, 12, 24), mlp=2, ls=False),
    ('DiNAT', 'base'): dict(C=128, depths=(3, 4, 18, 5), heads=(4, 8, 16, 32), mlp=2, ls=True),
    ('DiNAT', 'large'): dict(C=192, depths=(3, 4, 18, 5), heads=(6, 12, 24, 48), mlp=2,
                             ls=False),
}

# arch -> embed dims, depths, heads of the official DiNAT_s (MLP ratio 4, no layer scale).
DINAT_S_OFFICIAL = {
    'tiny': dict(C=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24)),
    'small': dict(C=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24)),
    'base': dict(C=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32)),
    'large': dict(C=192, depths=(2, 2, 18, 2), heads=(6, 12, 24, 48)),
}


def nat_official_shapes(C, depths, heads, mlp, ls, out_indices=(0, 1, 2, 3)):
    """{name: shape} of an official NAT/DiNAT backbone, from the naming rules alone."""
    shapes = {
        'patch_embed.proj.0.weight': (C // 2, 3, 3, 3), 'patch_embed.proj.0.bias': (C // 2,),
        'patch_embed.proj.1.weight': (C, C // 2, 3, 3), 'patch_embed.proj.1.bias': (C,),
        'patch_embed.norm.weight': (C,), 'patch_embed.norm.bias': (C,),
    }
    for i, (depth, h) in enumerate(zip(depths, heads)):
        dim = C * 2**i
        for j in range(depth):
            p = f'levels.{i}.blocks.{j}.'
            shapes.update({
                p + 'norm1.weight': (dim,), p + 'norm1.bias': (dim,),
                p + 'attn.qkv.weight': (3 * dim, dim), p + 'attn.qkv.bias': (3 * dim,),
                p + 'attn.rpb': (h, 13, 13),
                p + 'attn.proj.weight': (dim, dim), p + 'attn.proj.bias': (dim,),
                p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,),
                p + 'mlp.fc1.weight': (mlp * dim, dim), p + 'mlp.fc1.bias': (mlp * dim,),
                p + 'mlp.fc2.weight': (dim, mlp * dim), p + 'mlp.fc2.bias': (dim,),
            })
            if ls:
                shapes.update({p + 'gamma1': (dim,), p + 'gamma2': (dim,)})
        if i < len(depths) - 1:
            shapes[f'levels.{i}.downsample.reduction.weight'] = (2 * dim, dim, 3, 3)
            shapes[f'levels.{i}.downsample.norm.weight'] = (2 * dim,)
            shapes[f'levels.{i}.downsample.norm.bias'] = (2 * dim,)
        if i in out_indices:
            shapes.update({f'norm{i}.weight': (dim,), f'norm{i}.bias': (dim,)})
    return shapes


def dinat_s_official_shapes(C, depths, heads, out_indices=(0, 1, 2, 3)):
    """{name: shape} of the official DiNAT_s (detection/dinats.py), from its naming rules."""
    shapes = {'patch_embed.proj.weight': (C, 3, 4, 4), 'patch_embed.proj.bias': (C,),
              'patch_embed.norm.weight': (C,), 'patch_embed.norm.bias': (C,)}
    for i, (depth, h) in enumerate(zip(depths, heads)):
        dim = C * 2**i
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            shapes.update({
                p + 'norm1.weight': (dim,), p + 'norm1.bias': (dim,),
                p + 'attn.qkv.weight': (3 * dim, dim), p + 'attn.qkv.bias': (3 * dim,),
                p + 'attn.rpb': (h, 13, 13),
                p + 'attn.proj.weight': (dim, dim), p + 'attn.proj.bias': (dim,),
                p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,),
                p + 'mlp.fc1.weight': (4 * dim, dim), p + 'mlp.fc1.bias': (4 * dim,),
                p + 'mlp.fc2.weight': (dim, 4 * dim), p + 'mlp.fc2.bias': (dim,),
            })
        if i < len(depths) - 1:
            shapes.update({f'layers.{i}.downsample.norm.weight': (4 * dim,),
                           f'layers.{i}.downsample.norm.bias': (4 * dim,),
                           f'layers.{i}.downsample.reduction.weight': (2 * dim, 4 * dim)})
        if i in out_indices:
            shapes.update({f'norm{i}.weight': (dim,), f'norm{i}.bias': (dim,)})
    return shapes


def official_cls_state_dict(C=64, depths=(3, 4, 6, 5), heads=(2, 4, 8, 16), mlp=3, ls=False):
    """A state dict in the official classification layout: backbone names + norm.* + head.*."""
    shapes = nat_official_shapes(C, depths, heads, mlp, ls, out_indices=())
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    dim = C * 2**(len(depths) - 1)
    sd.update({'norm.weight': torch.rand(dim), 'norm.bias': torch.rand(dim),
               'head.weight': torch.randn(1000, dim), 'head.bias': torch.randn(1000)})
    return sd


def assert_backbone_loaded(model, state_dict) -> None:
    """Assert that ``model`` (a NAT-family backbone) holds exactly ``state_dict``'s weights,
    and that its output norms ``norm{i}``, which a classification checkpoint lacks, kept their
    initial ones and zeros."""
    for key, value in model.state_dict().items():
        if key.startswith('norm') and key[4].isdigit():  # output norms: not in the checkpoint
            assert torch.all(value == (1. if key.endswith('weight') else 0.)), key
        else:
            torch.testing.assert_close(value, state_dict[key], rtol=0, atol=0, msg=key)

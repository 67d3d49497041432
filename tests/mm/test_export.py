"""torch.export and ONNX export of the NAT/DiNAT backbones and the demo UPerNet (issue 15).

- the decompositions of the ``nat_mm::`` ops (used for ONNX) equal the compiled ops;
- ``torch.export`` with dynamic H and W, at sizes no window divides, keeps the compiled ops and
  gives the eager numbers at the export size and at another size;
- tools/export_onnx.py writes ONNX files that onnxruntime runs to the eager numbers at two sizes,
  and refuses Mask R-CNN with a message that names the RoI ops and mmdeploy.

Sizes are small (about 100-150 px) to keep the suite quick: the demo models are NAT-Mini.
"""
import os.path as osp

import pytest
import torch

import nat_mm  # noqa: F401  registers the backbones in mmseg and mmdet
from nat_mm.models import NAT, DiNAT
from nat_mm.ops import _torch_impl, export_decompositions, extension_loaded

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET = osp.join(ROOT, 'configs/det/demo_mask_rcnn_nat_mini.py')
SEG = osp.join(ROOT, 'configs/seg/demo_upernet_nat_mini.py')
DINAT_SEG = osp.join(ROOT, 'configs/seg/upernet_dinat_mini_160k.py')
NO_PRETRAINED = ['--cfg-options', 'model.backbone.init_cfg=None']
# The ONNX tests shrink the backbone to a few layers (the export's cost grows with the number of
# NA layers: NAT-Mini's 18 took 1.5-2 minutes per test here); every level keeps a layer, and
# DiNAT keeps dilated ones.
FEW_LAYERS = ['model.backbone.depths=[1,1,2,1]']
FEW_DILATED_LAYERS = FEW_LAYERS + ['model.backbone.dilations=[[4],[2],[1,2],[1]]']

needs_extension = pytest.mark.skipif(not extension_loaded(), reason='needs nat_mm._C')


def _na_targets(ep):
    return sorted({str(n.target) for n in ep.graph.nodes
                   if n.op == 'call_function' and 'nat_mm' in str(n.target)})


@needs_extension
@pytest.mark.parametrize('kernel_size,dilation', [((7, 7), (1, 1)), ((5, 3), (3, 2))],
                         ids=['k7', 'k5x3-d3x2'])
@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no-rpb'])
def test_decompositions_equal_the_compiled_ops(kernel_size, dilation, with_rpb):
    B, H, W, heads, D = 2, 19, 23, 3, 8
    q, k, v = torch.randn(3, B, H, W, heads, D, dtype=torch.float64)
    rpb = torch.randn(heads, 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1,
                      dtype=torch.float64) if with_rpb else None
    ops, table = torch.ops.nat_mm, export_decompositions()
    ks, dil = list(kernel_size), list(dilation)

    out, lse = ops.na2d_forward(q, k, v, rpb, ks, dil, 0.3)
    got_out, got_lse = table[ops.na2d_forward.default](q, k, v, rpb, ks, dil, 0.3)
    torch.testing.assert_close(got_out, out, atol=1e-12, rtol=0)
    torch.testing.assert_close(got_lse, lse, atol=1e-12, rtol=0)

    attn = ops.na2d_qk_forward(q, k, rpb, ks, dil)
    torch.testing.assert_close(table[ops.na2d_qk_forward.default](q, k, rpb, ks, dil), attn,
                               atol=1e-12, rtol=0)
    weights = attn.softmax(-1)
    torch.testing.assert_close(table[ops.na2d_av_forward.default](weights, v, ks, dil),
                               ops.na2d_av_forward(weights, v, ks, dil), atol=1e-12, rtol=0)


def test_torch_impl_exports_with_ceil_divided_dynamic_sizes():
    """The pure-PyTorch path behind a stride-4 conv (sizes ceil(H/4)) exports without guards."""

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 64, 3, stride=4, padding=1)
            self.qkv = torch.nn.Linear(64, 192)
            self.rpb = torch.nn.Parameter(torch.randn(2, 13, 13))

        def forward(self, x):
            x = self.stem(x).permute(0, 2, 3, 1)
            B, H, W, _ = x.shape
            q, k, v = self.qkv(x).reshape(B, H, W, 3, 2, 32).unbind(3)
            return _torch_impl.na2d(q, k, v, (7, 7), (2, 1), self.rpb, 0.2)

    layer = Layer().eval()
    dims = torch.export.Dim('H', min=57, max=400), torch.export.Dim('W', min=57, max=400)
    ep = torch.export.export(layer, (torch.randn(1, 3, 101, 130), ),
                             dynamic_shapes=({2: dims[0], 3: dims[1]}, ))
    x = torch.randn(1, 3, 75, 158)
    torch.testing.assert_close(ep.module()(x), layer(x), atol=1e-6, rtol=1e-6)


@needs_extension
@pytest.mark.parametrize('cls', [NAT, pytest.param(DiNAT, marks=pytest.mark.slow)],
                         ids=['NAT', 'DiNAT'])
def test_torch_export_backbone_dynamic_hw_equals_eager(cls):
    from nat_mm.mm.export import dynamic_ranges, torch_export

    model = cls(arch='mini').eval()
    model.init_weights()
    ep = torch_export(model, torch.randn(1, 3, 100, 140))
    assert _na_targets(ep), 'the compiled NA ops should stay single nodes in the program'
    ranges = dynamic_ranges(ep, model, (100, 140))
    assert ranges['H'][0] <= 100 <= ranges['H'][1] and ranges['W'][0] <= 117 <= ranges['W'][1]
    assert ranges['H'][0] <= 131 <= ranges['H'][1] and ranges['W'][0] <= 140 <= ranges['W'][1]
    if cls is NAT:  # level 2 (stride 16) unpadded from 97 px, level 3 (stride 32) padded to 192
        assert ranges == {'H': (97, 192), 'W': (97, 192)}
    for shape in [(100, 140), (131, 117)]:  # neither divisible by 32 or by 7 * 32
        x = torch.randn(1, 3, *shape)
        with torch.no_grad():
            eager = model(x)
            exported = ep.module()(x)
        assert len(exported) == 4
        for got, want in zip(exported, eager):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # outside the range a layer would pad differently: the program's guards refuse the input
    with pytest.raises(Exception, match='Guard failed'):
        ep.module()(torch.randn(1, 3, 100, ranges['W'][1] + 1 if cls is NAT else 60))


@needs_extension
@pytest.mark.slow
def test_torch_export_upernet_tensor_mode_equals_eager():
    from nat_mm.mm.build import load_model
    from nat_mm.mm.export import TensorMode, exportable, torch_export

    _, model, _ = load_model(SEG)
    module, names = exportable(model, backbone=False)
    assert isinstance(module, TensorMode) and names == ['seg_logits']
    ep = torch_export(module, torch.randn(1, 3, 120, 136))
    assert _na_targets(ep)
    for shape in [(120, 136), (143, 113)]:
        x = torch.randn(1, 3, *shape)
        with torch.no_grad():
            eager = model(x, mode='tensor')
            exported = ep.module()(x)
        assert exported.shape == (1, 2, (shape[0] + 3) // 4, (shape[1] + 3) // 4)
        torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def _run_tool(argv, capsys):
    from nat_mm.testing.tools import tool_cli

    rows = tool_cli('export_onnx').main(argv)
    return rows, capsys.readouterr().out


def _check_rows(rows, n_outputs, atol=1e-4):
    assert len(rows) == 2 and rows[0]['shape'] != rows[1]['shape']
    for row in rows:
        assert len(row['max_abs_diff']) == n_outputs
        assert max(row['max_abs_diff'].values()) < atol, row


@pytest.mark.slow
def test_export_onnx_demo_upernet(tmp_path, capsys):
    import onnx

    out = tmp_path / 'upernet.onnx'
    rows, log = _run_tool([SEG, '--shape', '120', '136', '--out', str(out), '--cfg-options',
                           *FEW_LAYERS], capsys)
    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert not any(node.domain.startswith('nat_mm') for node in model.graph.node)
    assert 'Einsum' in ops or 'MatMul' in ops
    assert [o.name for o in model.graph.output] == ['seg_logits']
    _check_rows(rows, 1)
    assert rows[0]['output_shapes']['seg_logits'] == [1, 2, 30, 34]
    assert 'onnxruntime vs eager at 1x3x120x136: max abs diff' in log


# The whole demo UPerNet above covers the NAT backbone in ONNX (each export takes minutes here);
# this covers --backbone and the dilated windows of DiNAT.
@pytest.mark.slow
@pytest.mark.parametrize('config,extra', [(DINAT_SEG, NO_PRETRAINED + FEW_DILATED_LAYERS)],
                         ids=['DiNAT'])
def test_export_onnx_backbone(config, extra, tmp_path, capsys):
    import onnx

    out = tmp_path / 'backbone.onnx'
    rows, log = _run_tool([config, '--backbone', '--shape', '100', '140', '--out', str(out),
                           *extra], capsys)
    names = [o.name for o in onnx.load(str(out)).graph.output]
    assert names == ['level0', 'level1', 'level2', 'level3']
    _check_rows(rows, 4)
    channels = [64, 128, 256, 512]
    for row in rows:
        H, W = row['shape']
        for i, name in enumerate(names):
            stride = 4 * 2 ** i
            assert row['output_shapes'][name] == [1, channels[i], -(-H // stride),
                                                  -(-W // stride)]


def test_export_onnx_from_checkpoint_and_detector_error(tmp_path, capsys):
    """A checkpoint's weights are what gets exported; Mask R-CNN is refused with a reason."""
    from mmengine.runner import save_checkpoint
    from nat_mm.testing.tools import tool_cli

    from nat_mm.mm.build import load_model
    from nat_mm.mm.export import ExportError

    _, model, _ = load_model(SEG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ckpt = tmp_path / 'seg.pth'
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict()), str(ckpt))
    _, loaded, _ = load_model(SEG, str(ckpt))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(ExportError) as info:
        tool_cli('export_onnx').main([DET, '--shape', '128', '128', '--out',
                                      str(tmp_path / 'det.onnx')])
    message = str(info.value)
    assert 'MaskRCNN' in message and 'RoI' in message and 'mmdeploy' in message
    assert '--backbone' in message
    assert not (tmp_path / 'det.onnx').exists()

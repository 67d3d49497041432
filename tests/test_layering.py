"""The package's layers import downwards only (docs/design.md section 2), read from the sources.

ops <- models <- utils <- mm, with compat on ops alone: a subpackage imports nat_mm's own code
only from the layers below it, and ``nat_mm.ops`` and ``nat_mm.models`` import torch (and timm,
triton) only, at any depth. ``nat_mm.utils`` and the torch-only modules of ``nat_mm.testing``
(which tools/gpu runs on a machine without OpenMMLab) import third-party packages other than torch
and timm inside functions only. Every import statement of every module is checked, including
those inside functions and ``try`` blocks; that the layers also import and run without OpenMMLab
is test_backbone.py's test_layering_models_import_without_openmmlab.
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'nat_mm'

# What each layer may import of nat_mm (besides itself).
ALLOWED_NAT_MM = {
    'ops': set(),
    'compat': {'ops'},
    'models': {'ops'},
    'utils': {'ops', 'models'},
    'mm': {'ops', 'models', 'utils'},
    'testing': {'ops', 'models', 'utils', 'mm'},
}
# Third-party packages a layer may import anywhere in its modules; None: any.
ALLOWED_ANYWHERE = {
    'ops': {'torch', 'triton', 'nvidia'},
    'compat': {'torch'},
    'models': {'torch', 'timm'},
    'utils': None,
    'mm': None,
    'testing': None,
}
# Third-party packages a layer's modules may import when they are imported themselves.
ALLOWED_AT_IMPORT = {'torch', 'timm', 'triton', 'numpy', 'nvidia'}
# The torch-only modules of nat_mm.testing (tools/gpu imports them without OpenMMLab).
TORCH_ONLY_TESTING = {'nat_mm.testing', 'nat_mm.testing.na_reference',
                      'nat_mm.testing.op_cases', 'nat_mm.testing.cuda_emu',
                      'nat_mm.testing.cuda_emu.build'}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path):
    """``(imported module, at import time?)`` for every import statement of a source file."""
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    tree = ast.parse(path.read_text(), str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                targets = ['.'.join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module]
        else:
            continue
        for target in targets:
            yield target, id(node) not in in_function


def _layer(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


SOURCES = sorted(p for p in PACKAGE.rglob('*.py') if _layer(_module_name(p)))


def _is_stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top == '__future__'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    module = _module_name(path)
    layer = _layer(module)
    assert layer in ALLOWED_NAT_MM, f'{module}: a new layer; give it its place in this test'
    bad = []
    for target, at_import in _imports(path):
        top = target.split('.')[0]
        if top == 'nat_mm':
            other = _layer(target)
            if other and other != layer and other not in ALLOWED_NAT_MM[layer]:
                bad.append(f'{target} (nat_mm.{layer} may import only '
                           f'{sorted(ALLOWED_NAT_MM[layer])})')
            elif not other and layer in ('ops', 'compat', 'models', 'utils'):
                bad.append(f'{target} (the top-level package imports every layer)')
            continue
        if _is_stdlib(top):
            continue
        anywhere = ALLOWED_ANYWHERE[layer]
        if anywhere is not None and top not in anywhere:
            bad.append(f'{target} (nat_mm.{layer} imports only {sorted(anywhere)})')
        torch_only = layer == 'utils' or module in TORCH_ONLY_TESTING
        if torch_only and at_import and top not in ALLOWED_AT_IMPORT:
            bad.append(f'{target} at import time (only {sorted(ALLOWED_AT_IMPORT)}; import it '
                       f'in the function that needs it)')
    assert not bad, f'{module}: ' + '; '.join(bad)


def test_every_layer_is_checked():
    """The walk finds every subpackage (an empty parametrization would pass vacuously)."""
    assert {_layer(_module_name(p)) for p in SOURCES} == set(ALLOWED_NAT_MM)
    assert len(SOURCES) > 40


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    """The check itself: a models module importing nat_mm.mm, and one importing mmengine inside
    a function, are both reported."""
    fake = tmp_path / 'nat_mm' / 'models'
    fake.mkdir(parents=True)
    (fake / 'bad.py').write_text('from ..mm import registry\n\n\ndef f():\n'
                                 '    import mmengine\n')
    monkeypatch.setattr(sys.modules[__name__], 'PACKAGE', tmp_path / 'nat_mm')
    with pytest.raises(AssertionError) as error:
        test_imports_point_down(fake / 'bad.py')
    assert 'nat_mm.mm (nat_mm.models may import only' in str(error.value)
    assert 'mmengine (nat_mm.models imports only' in str(error.value)

"""The package's layers import one way: a module may import its own package and the layers below it, never a layer
above (docs/design.md lists them). Every import counts, function-level ones included, and every module (kernels/
too): a lazy upward import is still a cycle in the design."""
import ast
from pathlib import Path

import fastdecoder

#: lowest first; the names in one entry are one layer (they may import each other's layer-mates only if listed lower)
LAYERS = [
    ("errors",), ("phonemes", "plain", "argtypes"), ("limits",), ("safe_torch_load",),
    ("presets",), ("config",),
    ("data",),
    ("kernels",),
    ("ops",),
    ("nn",),
    ("losses",),
    ("model",),
    ("device", "checkpoint"),
    ("members",),
    ("decode",),
    ("evaluation",),
    ("arggroups",),
    ("train",),
    ("bench",),
    ("stream",),
    ("serve",),
    ("tune",),
    ("eval_outputs", "eval_report", "parity", "testing"),
    ("cli",),
    ("__main__",),
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def unit_of(path: Path, root: Path) -> str:
    """The layer unit of a module file: its top-level package under fastdecoder, or the module's own name."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def upward_imports(root: Path) -> list[str]:
    """'file: imports fastdecoder.X (layer a above layer b)' for every import of a higher layer under ``root``."""
    bad = []
    for f in sorted(root.rglob("*.py")):
        src = unit_of(f, root)
        if src == "__init__":  # the top-level package's lazy exports: the API, above every layer
            continue
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                         if node.module == "fastdecoder"]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "fastdecoder" or len(parts) < 2:
                    continue
                dst = parts[1]
                if dst == src or dst.startswith("_") and dst not in RANK:  # own package; native extensions
                    continue
                if src not in RANK or dst not in RANK:
                    bad.append(f"{f.relative_to(root)}: {src} or {dst} has no layer (add it to LAYERS)")
                elif RANK[dst] > RANK[src]:
                    bad.append(f"{f.relative_to(root)}:{node.lineno}: {src} imports {name} (a higher layer)")
    return bad


def test_layers_import_downward_only():
    root = Path(fastdecoder.__file__).parent
    units = {unit_of(f, root) for f in root.rglob("*.py")} - {"__init__"}
    assert units <= set(RANK), f"modules without a layer: {sorted(units - set(RANK))}"
    bad = upward_imports(root)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_a_planted_upward_import_is_caught(tmp_path):
    root = tmp_path / "fastdecoder"
    (root / "ops").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "train" / "loop.py").write_text("from fastdecoder.ops import gru\n")   # downward: fine
    (root / "ops" / "gru.py").write_text("def f():\n    from fastdecoder.train.loop import x\n")  # upward, lazy
    (root / "kernels").mkdir()
    (root / "kernels" / "k.py").write_text("import fastdecoder.ops.gru\n")  # upward from kernels
    bad = upward_imports(root)
    assert len(bad) == 2, bad
    assert any("ops/gru.py:2: ops imports fastdecoder.train.loop" in b for b in bad), bad
    assert any("kernels/k.py:1: kernels imports fastdecoder.ops.gru" in b for b in bad), bad

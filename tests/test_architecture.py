"""The architecture as docs/architecture.md describes it: no module imports from a layer above
its own, sibling methods do not import each other, and a new method is one file plus one YAML
(the page's worked example, applied to a copy of the package and run through the CLI)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ssl_rs"

# (module prefix, layer); the longest matching prefix wins. The same table as the docs' "Layers".
LAYERS = [
    ("ssl_rs.errors", 0), ("ssl_rs.text", 0), ("ssl_rs.files", 0), ("ssl_rs.geodesy", 0), ("ssl_rs.registry", 0),
    ("ssl_rs.progress", 0), ("ssl_rs.precision", 0),
    ("ssl_rs", 0),  # the package's own __init__ (version only)
    ("ssl_rs.geo", 1), ("ssl_rs.augmentations", 1), ("ssl_rs.backbones", 1), ("ssl_rs.data", 1),
    ("ssl_rs.config", 1), ("ssl_rs.checkpoint", 1),
    ("ssl_rs.methods", 2), ("ssl_rs.evaluation", 2),
    ("ssl_rs.zoo", 3),
    ("ssl_rs.train", 4), ("ssl_rs.run_directory", 4), ("ssl_rs.interrupts", 4), ("ssl_rs.trainer", 4),
    ("ssl_rs.cli", 5), ("ssl_rs.demo", 5), ("ssl_rs.bench", 5),
]
#: methods/ modules every method may import; any other methods/ module is a sibling method
SHARED_METHOD_MODULES = {"base", "recipe", "losses", "crops", "vit_utils", "location_encoders"}
#: (importer prefix, forbidden prefix) pairs the issue names besides the layers
FORBIDDEN = [("ssl_rs.data", "ssl_rs.geo")]


def layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def imports(path: Path, root: Path = REPO):
    """(importing module, imported ssl_rs module) for every import in ``path`` (a file under
    ``root``/ssl_rs), relative ones resolved."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    module = module.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ssl_rs"):
                if node.module is None or target in ("ssl_rs", "ssl_rs.data", "ssl_rs.methods"):
                    # `from . import x` or `from ..data import dataset`: the names may be modules
                    for alias in node.names:
                        yield module, f"{target}.{alias.name}"
                else:
                    yield module, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ssl_rs"):
                    yield module, alias.name


def all_imports():
    return [edge for path in sorted(PACKAGE.rglob("*.py")) if "configs" not in path.parts for edge in imports(path)]


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, b in all_imports() if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_named_boundaries():
    bad = [f"{a} imports {b}" for a, b in all_imports() for src, dst in FORBIDDEN
           if a.startswith(src) and (b == dst or b.startswith(dst + "."))]
    assert not bad, "\n".join(bad)


def test_sibling_methods_do_not_import_each_other():
    bad = []
    for a, b in all_imports():
        if a.startswith("ssl_rs.methods.") and b.startswith("ssl_rs.methods."):
            target = b.split(".")[2]
            if target != a.split(".")[2] and target not in SHARED_METHOD_MODULES:
                bad.append(f"{a} imports {b}")
    assert not bad, "\n".join(bad)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself can fail: a methods/ file importing train is reported."""
    fake = tmp_path / "ssl_rs" / "methods" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..train import pretrain\nfrom .base import BaseMethod\n")
    edges = list(imports(fake, root=tmp_path))
    assert [(a, b) for a, b in edges if layer(b) > layer(a)] == [("ssl_rs.methods.x", "ssl_rs.train")]


def worked_example():
    """{relative path: text} of the files the docs' worked example adds."""
    text = (REPO / "docs" / "architecture.md").read_text()
    diff = re.search(r"### Worked example.*?```diff\n(.*?)```", text, re.S).group(1)
    files, current = {}, None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            current = line[4:].strip()
            files[current] = []
        elif line.startswith("+") and current:
            files[current].append(line[1:])
    return {path: "\n".join(lines) + "\n" for path, lines in files.items()}


def test_worked_example_adds_one_method_file_and_one_config():
    files = worked_example()
    assert sorted(files) == ["ssl_rs/configs/synthetic/barlowtwins.yaml", "ssl_rs/methods/barlowtwins.py"]
    assert not (PACKAGE / "methods" / "barlowtwins.py").exists()  # an example, not shipped


@pytest.mark.slow
def test_worked_example_trains_exports_and_lists(tiny_world, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "ssl_rs", ignore=shutil.ignore_patterns("__pycache__"))
    for relative, text in worked_example().items():
        (copy / relative).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "ssl_rs.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "barlowtwins" in cli("list", "methods")
    cli("pretrain", "-c", "synthetic/barlowtwins", f"data.path={tiny_world}", f"output.dir={tmp_path}/runs",
        "output.name=bt", "data.batch_size=32", "trainer.max_epochs=1", "trainer.progress_bar=false",
        "trainer.knn_every_n_epochs=0", "eval.schemes=null", "backbone.args.width=8", "geo.name=georank")
    assert (tmp_path / "runs" / "bt" / "results.json").is_file()
    cli("zoo", "export", str(tmp_path / "runs" / "bt"), "-o", str(tmp_path / "release"))
    assert len(list((tmp_path / "release").glob("*.safetensors"))) == 1

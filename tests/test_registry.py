"""Registries load their own providers: adding a method (or any part) is one file, no import line."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssl_rs.errors import ConfigError
from ssl_rs.registry import METHODS, Registry
from ssl_rs.text import did_you_mean

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_rs"


def registered_in_source(folder: Path, registry: str) -> set:
    """Every name a ``@REGISTRY.register("name"`` line in ``folder`` declares: the files, not an import list."""
    pattern = re.compile(rf'@{registry}\.register\(\s*"([^"]+)"')
    return {m for path in folder.glob("*.py") for m in pattern.findall(path.read_text())}


def test_registry_alone_loads_every_method_lazily():
    code = textwrap.dedent("""
        import sys
        from ssl_rs.registry import METHODS, REGULARIZERS
        print("before", "ssl_rs.methods.mocov2" in sys.modules)
        print("methods", ",".join(METHODS.names()))
        print("regularizers", ",".join(REGULARIZERS.names()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["before"] == "False"  # nothing is imported until the registry is asked
    methods = registered_in_source(PACKAGE / "methods", "METHODS")
    assert len(methods) >= 11 and set(lines["methods"].split(",")) == methods
    assert set(lines["regularizers"].split(",")) == registered_in_source(PACKAGE / "geo", "REGULARIZERS")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown method 'mocov'; did you mean 'mocov2'\? \(known: .*simclr"):
        METHODS.get("mocov")
    assert did_you_mean("trainer.max_epoch", ["trainer.max_epochs", "trainer.seed"]) == \
        "; did you mean 'trainer.max_epochs'?"
    # a dotted name whose whole matches nothing is matched on its leaf
    assert did_you_mean("my.custom.section.max_epoch", ["trainer.max_epochs", "data.path"]) == \
        "; did you mean 'trainer.max_epochs'?"
    assert did_you_mean("zzz", ["mocov2", "simclr"]) == ""


def test_double_registration_is_an_error():
    things = Registry("thing")

    @things.register("a")
    def first():
        return 1

    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        things.register("a")(lambda: 2)
    assert things.create("a") == 1


@pytest.fixture
def temp_package(tmp_path, monkeypatch):
    """``make(files)``: a package ``ssl_rs_tmp_parts`` on sys.path with a registry of its own,
    ``THINGS``, and the given modules; removed from ``sys.modules`` afterwards."""
    name = "ssl_rs_tmp_parts"

    def make(files):
        root = tmp_path / name
        root.mkdir()
        (root / "__init__.py").write_text(
            "from ssl_rs.registry import Registry\n"
            f"THINGS = Registry('thing', providers={name!r})\n"
        )
        for module, text in files.items():
            (root / f"{module}.py").write_text(textwrap.dedent(text))
        monkeypatch.syspath_prepend(str(tmp_path))
        import importlib

        return importlib.import_module(name)

    yield make
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_a_new_provider_file_is_registered_without_an_import_line(temp_package):
    pkg = temp_package({
        "alpha": """
            from . import THINGS

            @THINGS.register("alpha")
            def alpha():
                \"\"\"The first thing.\"\"\"
                return "a"
        """,
        # a provider that asks the registry while it is being loaded (an import cycle): it sees
        # what is registered so far instead of recursing into the loading again
        "beta": """
            from ssl_rs_tmp_parts import THINGS

            SEEN_ALPHA = "alpha" in THINGS

            @THINGS.register("beta")
            def beta():
                return "b"
        """,
        "helpers": "VALUE = 1  # registers nothing: importing it is harmless\n",
    })
    assert "ssl_rs_tmp_parts.alpha" not in sys.modules  # lazy: nothing imported at creation
    assert pkg.THINGS.names() == ["alpha", "beta"]
    assert pkg.THINGS.create("beta") == "b" and pkg.THINGS.get("alpha").summary == "The first thing."
    assert sys.modules["ssl_rs_tmp_parts.beta"].SEEN_ALPHA  # modules load in name order, alpha first
    assert "ssl_rs_tmp_parts.helpers" in sys.modules and len(pkg.THINGS) == 2


def test_a_provider_that_fails_to_import_raises_and_is_retried(temp_package):
    pkg = temp_package({"broken": "raise RuntimeError('bad provider')\n"})
    for _ in range(2):  # not marked loaded after a failure: the next query tries again, and fails again
        with pytest.raises(RuntimeError, match="bad provider"):
            pkg.THINGS.names()

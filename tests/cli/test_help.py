"""``ssl-rs --help`` and every subcommand's help: each option has help text and appears only on the
commands where it acts."""

from __future__ import annotations

import argparse
from typing import Dict, List, Tuple

import pytest

from ssl_rs.cli import build_parser, main


def commands(parser: argparse.ArgumentParser, path: Tuple[str, ...] = ("ssl-rs",)):
    """(command path, its parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


COMMANDS: Dict[str, argparse.ArgumentParser] = {" ".join(path): p for path, p in commands(build_parser())}


def options(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    """The command's own arguments (not --help, --version or the subcommand choice)."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command):
    missing = [a.option_strings[-1] if a.option_strings else a.dest for a in options(COMMANDS[command])
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert not missing, f"`{command}`: no help for {', '.join(missing)}"


def flags(command: str) -> set:
    return {s for a in options(COMMANDS[command]) for s in a.option_strings}


def test_protocol_options_only_on_their_protocol():
    assert {"--k", "--temperature"} <= flags("ssl-rs eval knn") and "--epochs" not in flags("ssl-rs eval knn")
    assert "--epochs" in flags("ssl-rs eval linear") and not {"--k", "--temperature"} & flags("ssl-rs eval linear")
    tuning = {"--lr", "--backbone-lr-scale", "--layer-decay", "--weight-decay"}
    assert tuning | {"--epochs"} <= flags("ssl-rs eval finetune") and not {"--k", "--temperature"} & flags(
        "ssl-rs eval finetune")
    assert not any(tuning & flags(f"ssl-rs eval {p}") for p in ("knn", "linear", "geo"))
    segmentation = flags("ssl-rs eval segmentation")
    assert {"--epochs", "--lr", "--decoder"} <= segmentation and not {"--k", "--temperature", "--layer-decay"} & segmentation
    assert not any("--decoder" in flags(f"ssl-rs eval {p}") for p in ("knn", "linear", "geo", "finetune"))


@pytest.mark.parametrize("argv", [["eval", "knn", "--epochs", "5"], ["eval", "linear", "--k", "5"]])
def test_an_option_of_the_other_protocol_is_refused(argv, capsys, tiny_world):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--backbone", "tiny_cnn", "--data", str(tiny_world)])
    assert stop.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "join as they land" not in text
    top = COMMANDS["ssl-rs"]
    for name in ("pretrain", "eval", "data", "list", "zoo", "bench"):
        assert f"{name}" in text and f"ssl-rs {name}" in COMMANDS
    assert top.description and all(word in top.description for word in ("pretrain", "weights", "benchmarks"))


def test_top_level_help_names_every_eval_protocol(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one line per command
    with pytest.raises(SystemExit):
        main(["--help"])
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("eval ")]
    for protocol in ("k-NN", "linear probe", "geo probes", "segmentation", "fine-tuned"):
        assert protocol in line, line  # segmentation was left out


def test_convert_flags_state_each_converters_default_once():
    import re

    from ssl_rs.data.converters import CONVERTERS

    # a flag several converters share joins their helps with "; ", each one "<converter>: <help>"
    per_converter = re.compile("; (?=(?:" + "|".join(map(re.escape, CONVERTERS.names())) + "): )")
    stated = re.compile(r"\bdefault[: ]")
    for action in options(COMMANDS["ssl-rs data convert"]):
        for text in per_converter.split(action.help):
            assert len(stated.findall(text)) <= 1, f"{action.option_strings[-1]}: {text!r}"
    date = next(a for a in options(COMMANDS["ssl-rs data convert"]) if "--date" in a.option_strings)
    assert date.help == "cashew-benin: the date to convert, YYYYMMDD (default: the least cloudy by its CLD band)"

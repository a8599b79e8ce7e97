"""Every command-line flag of every CLI says what it does in --help."""

import argparse
import importlib

import pytest

CLIS = ["backbones.train", "backbones.evaluate", "detection.train", "detection.eval",
        "detection.compare", "deploy.export", "deploy.bench", "deploy.triton"]  # fmt: skip


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif action.option_strings and action.dest != "help":
            yield action


@pytest.mark.parametrize("module", CLIS)
def test_every_flag_has_help(module):
    parser = importlib.import_module(module).build_parser()
    unexplained = [action.option_strings[-1] for action in _actions(parser) if not action.help]
    assert unexplained == []
    parser.format_help()  # %-formatting in help strings is valid

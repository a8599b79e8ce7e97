"""Every command-line flag of every CLI says what it does in --help."""

import argparse
import importlib

import pytest

CLIS = ["backbones.train", "backbones.evaluate", "backbones.zoo", "backbones.analysis", "backbones.summary",
        "detection.train", "detection.eval", "detection.compare", "deploy.export", "deploy.bench",
        "deploy.triton"]  # fmt: skip
RANGE_CHECKED = [cli for cli in CLIS if cli not in ("backbones.zoo", "backbones.summary")]  # no numeric flags


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


@pytest.mark.parametrize("module", RANGE_CHECKED)
def test_every_range_checked_flag_refuses_a_negative_value_by_name(module, capsys):
    from backbones import cliargs

    checked = {cliargs.POSITIVE_INT, cliargs.COUNT, cliargs.POSITIVE, cliargs.NON_NEGATIVE, cliargs.MOMENTUM,
               cliargs.FRACTION}  # fmt: skip
    parser = importlib.import_module(module).build_parser()
    flags = [action for action in _actions(parser) if action.type in checked]
    assert flags  # every CLI here has counts, sizes or rates to check
    for action in flags:
        flag = action.option_strings[-1]
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([f"{flag}=-1"])
        assert exit_info.value.code == 2
        assert f"argument {'/'.join(action.option_strings)}: must" in capsys.readouterr().err, flag

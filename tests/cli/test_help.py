"""Every command explains itself: each option and positional argument of every (sub)command has a help text,
defaults are shown, -v/--threads work before or after the command, and likely mistakes get a warning."""
import argparse

import pytest

from bmojo.cli.main import build_parser, main


def _parsers(p, path=("bmojo",)):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield from _parsers(sp, path + (name,))


def test_every_argument_of_every_command_has_help():
    missing = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in _parsers(build_parser())
               for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and not (a.help or "").strip()]
    assert not missing, missing


def test_train_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("(default: bmojo)", "(default: 256)", "(default: 1,500,000)", "--overwrite"):
        assert text in out, text


def test_compare_task_options_name_each_tasks_meaning_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    out = out[out.index("task options"):]  # the help, not the usage line
    vocab = out[out.index("--vocab-size V"):out.index("--seq-len V")]
    assert "[mqar: 256]" in vocab and "[passkey: 64]" in vocab and "needle marker" in vocab
    assert "(default: None)" not in vocab


@pytest.mark.parametrize("argv", [["-v", "memory", "info"], ["memory", "-v", "info"], ["memory", "info", "-v"]])
def test_verbose_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv + ["x"])
    assert args.verbose is True and args.command == "memory"
    assert build_parser().parse_args(["memory", "info", "x"]).verbose is False
    assert build_parser().parse_args(["train", "--threads", "2"]).threads == 2


def test_likely_mistakes_are_warned_about(tmp_path, texts, capsys):
    assert main(["train", "--corpus", str(texts), "--data", str(tmp_path / "data"), "--params", "2500",
                 "--seq-len", "16", "--steps", "2", "--warmup", "5", "--batch-size", "2", "--eval-batches", "1",
                 "--progress", "false", "--model-opt", "n_layers=1", "--model-opt", "window=8",
                 "--model-opt", "chunk=4", "--model-opt", "memory_size=4", "--model-opt", "ssm_head_dim=8",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "warning: --params 2,500 gives" in err and "warning: --warmup 5 >= --steps 2" in err
    # a size more than 2x from what the shape can build is refused, not warned about (it built 3,926 for 1,000)
    assert main(["train", "--corpus", str(texts), "--data", str(tmp_path / "data"), "--params", "1000",
                 "--seq-len", "16", "--steps", "2", "--model-opt", "n_layers=1", "--model-opt", "window=8",
                 "--model-opt", "chunk=4", "--model-opt", "memory_size=4", "--model-opt", "ssm_head_dim=8",
                 "--out", str(tmp_path / "run2")]) == 2
    assert "--params 1,000: the nearest bmojo model of this shape has 3,926" in capsys.readouterr().err

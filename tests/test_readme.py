"""The README and the docs say what the code does: the README's Python snippet runs as written (litgpt's
habit), every `bmojo ...` command line they show parses with today's options, the README stays a front page
(<= 200 lines) and its links resolve."""
import re
import shlex
from pathlib import Path

import pytest

from bmojo.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_python_snippet_runs_as_written():
    (code,) = _blocks((ROOT / "README.md").read_text(), "python")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["tokens"].shape) == (2, 60)  # generate returns ids: the prompt's 10 and 50 new
    assert len(scope["new"]) == 50 and len(scope["new"][0]) == 2  # the callback saw each new (B,) ids
    assert scope["out"].logits.shape == (2, 300, 256)


def _commands():
    for page in PAGES:
        for block in _blocks(page.read_text(), "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if " -m bmojo " in line:
                    line = "bmojo " + line.split(" -m bmojo ", 1)[1]
                if line.startswith("bmojo "):
                    yield pytest.param(line, id=f"{page.name}:{line[:60]}")
            for line in block.splitlines():  # the set-up commands end in a bmojo call too
                if ".venv/bin/bmojo " in line:
                    yield pytest.param("bmojo " + line.split(".venv/bin/bmojo ", 1)[1], id=f"{page.name}:setup")


@pytest.mark.parametrize("line", list(_commands()))
def test_documented_commands_parse(line):
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)  # an unknown option or a bad choice exits here
    assert args.command == argv[0] and callable(args.func)


def test_readme_is_a_front_page_with_working_links():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: link {target} leads nowhere"

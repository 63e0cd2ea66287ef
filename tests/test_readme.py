"""README.md stays true to the code: the commands, options, settings and files it cites exist."""

import argparse
import re
from pathlib import Path

from defectmap.arguments import parser
from defectmap.config import config_to_dict, resolve_config
from defectmap.models import MODELS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Scripts the README names as the ones a later command replaced (it says so where it names them).
RETIRED = {"bench/granularity.py"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices


def _code(text: str) -> str:
    """The README's code: fenced blocks and inline `spans` (which may wrap onto the next line)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    return "\n".join(blocks + [" ".join(span.split()) for span in spans])


def _invocations(text: str) -> list[tuple[str, str]]:
    """(command, the rest of its line, with backslash continuations) of every `defectmap COMMAND ...` in text."""
    return re.findall(r"(?<![\w/-])defectmap ([a-z]+)((?:\\\n|[^\n])*)", _code(text))


def test_every_command_and_option_the_readme_shows_exists():
    commands = _commands()
    invocations = _invocations(README)
    assert len(invocations) > 100  # the pattern still finds the README's commands
    wrong = []
    for command, rest in invocations:
        if command not in commands:
            wrong.append(f"defectmap {command}")
            continue
        options = commands[command]._option_string_actions
        wrong += [f"defectmap {command} {flag}" for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest)
                  if flag not in options]  # fmt: skip
    assert wrong == []


def test_the_readme_names_every_command():
    shown = {command for command, _ in _invocations(README)}
    assert set(_commands()) - shown == set()


def test_every_setting_the_readme_shows_is_a_config_key():
    keys = set()
    for method in MODELS:
        for section, values in config_to_dict(resolve_config({}, method)).items():
            if isinstance(values, dict):
                keys |= {f"{section}.{key}" for key in values}
    shown = set(re.findall(r"--set ([a-z_]+\.[a-z_]+)=", README))
    assert len(shown) > 20
    assert shown - keys == set()


def _as_glob(cited: str) -> str:
    """A cited path with its placeholders (`seed{0,1,2}`, `seedN`, `postprocess_features_M`) as wildcards."""
    cited = re.sub(r"\{[^}]*\}", "*", cited)
    return re.sub(r"(?<=[_a-z])[A-Z](?=[._/]|$)", "*", cited)


def test_every_file_the_readme_cites_exists():
    pattern = r"(?<![\w/.-])((?:bench|docs)/(?:[\w./-]|\{[^}]*\})+)"  # a brace may hold commas: seed{0,1,2}
    cited = {path.rstrip(".").rstrip("/") for path in re.findall(pattern, README)}
    assert len(cited) > 50
    missing = sorted(path for path in cited - RETIRED if not any(ROOT.glob(_as_glob(path))))
    assert missing == []

"""The README stays short, and every command it (and the docs pages it links to) shows runs as written.

Convention: a fenced block preceded by a `<!-- quick -->` line is run, each command in turn, and
must exit 0; where the block is a transcript (`$ command` followed by output), the printed output
must equal what the block shows. Every other `metaseg ...` command is checked against `--help`: its
subcommand exists and each option it uses is listed in that subcommand's help. `make` commands
name a Makefile target (and an existing `experiments/<EXP>.yaml`).
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pages whose commands are checked: the README and the docs pages split out of it
PAGES = ["README.md"] + [f"docs/{p}.md" for p in ("demo", "data", "episodes", "meta-training", "learners",
                                                  "adapt-evaluate", "sam-adapter", "benchmarks", "development", "synthetic",
                                                  "architecture", "sam_mix", "speed")]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
QUICK = "<!-- quick -->"


@dataclass
class Command:
    page: str
    line: int
    argv: list[str]
    quick: bool
    expected: list[str] | None  # transcript output shown after a `$ command`, if any


def fenced_blocks(text: str):
    """(language, first line number, lines, quick) for each fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        quick = i > 0 and lines[i - 1].strip() == QUICK
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        yield m.group(1), i + 2, lines[i + 1:j], quick
        i = j + 1


def commands_of(page: str) -> list[Command]:
    out: list[Command] = []
    for lang, first, lines, quick in fenced_blocks((ROOT / page).read_text()):
        if lang not in SHELL_LANGS:
            continue
        transcript = any(line.startswith("$ ") for line in lines)
        k = 0
        while k < len(lines):
            line, start = lines[k], first + k
            if transcript:
                if not line.startswith("$ "):
                    k += 1
                    continue
                line = line[2:]
            k += 1
            while line.rstrip().endswith("\\") and k < len(lines):  # continuation lines
                line = line.rstrip()[:-1] + " " + lines[k].strip()
                k += 1
            expected = None
            if transcript:
                expected = []
                while k < len(lines) and not lines[k].startswith("$ "):
                    expected.append(lines[k])
                    k += 1
                while expected and not expected[-1].strip():
                    expected.pop()
            argv = shlex.split(line, comments=True)
            if argv and argv[0] in ("metaseg", "make") and not line.startswith("metaseg:"):
                out.append(Command(page, start, argv, quick, expected))
    return out


ALL = [c for page in PAGES for c in commands_of(page)]


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def metaseg(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaseg.cli", *args], cwd=ROOT, env=kw.pop("env", env()),
                          capture_output=True, text=True, timeout=300, **kw)


@functools.lru_cache(maxsize=None)
def help_text(*words: str) -> str:
    proc = metaseg([*words, "--help"])
    assert proc.returncode == 0, f"metaseg {' '.join(words)} --help failed: {proc.stderr.strip()[-500:]}"
    return proc.stdout


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(subcommand words, the rest) of `metaseg [--threads N] <command> [<sub>] ...`."""
    rest = argv[1:]
    if rest and rest[0] == "--threads":
        rest = rest[2:]
    elif rest and rest[0].startswith("--threads="):
        rest = rest[1:]
    words = [rest[0]] if rest else []
    if rest and rest[0] in ("data", "synth") and len(rest) > 1 and not rest[1].startswith("-"):
        words.append(rest[1])
    return words, rest[len(words):]


def options(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if re.match(r"^--?[A-Za-z]", t)]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines < 300, f"README.md has {lines} lines; move reference material to docs/"


def test_readme_links_every_docs_page_and_they_exist():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "results_gpu.md":
            assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), f"README links {target}, which does not exist"


def test_the_commands_are_found():
    """The extractor sees the README's commands, so the checks below cannot pass by finding none."""
    readme = [c for c in ALL if c.page == "README.md"]
    firsts = {" ".join(c.argv[:2]) for c in readme}
    assert {"make demo", "make test", "make benchmark", "metaseg meta-train", "metaseg adapt", "metaseg evaluate"} <= firsts
    assert any(c.quick for c in readme)
    assert sum(c.expected is not None for c in ALL) >= 3  # transcripts in the docs pages


def test_parser_handles_continuations_transcripts_and_comments(tmp_path, monkeypatch):
    page = tmp_path / "p.md"
    page.write_text("x\n<!-- quick -->\n```bash\nmetaseg data list   # comment\nmake demo ARGS=\"-x 1\"\n```\n"
                    "```\n$ metaseg adapt --a 1 \\\n    --b 2\nout 1\n\n$ ls\n```\n```yaml\nmetaseg: x\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    cmds = commands_of("p.md")
    assert [c.argv for c in cmds] == [["metaseg", "data", "list"], ["make", "demo", "ARGS=-x 1"],
                                      ["metaseg", "adapt", "--a", "1", "--b", "2"]]
    assert [c.quick for c in cmds] == [True, True, False] and cmds[2].expected == ["out 1"]
    assert options(["x", "--a=1", "-o", "n=2", "-5"]) == ["--a", "-o"]


MAKE_TARGETS = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("cmd", [c for c in ALL if c.argv[0] == "make"], ids=lambda c: f"{c.page}:{c.line}")
def test_make_command_names_a_target(cmd):
    targets = [a for a in cmd.argv[1:] if "=" not in a and not a.startswith("-")]
    assert targets and all(t in MAKE_TARGETS for t in targets), f"{cmd.page}:{cmd.line}: {shlex.join(cmd.argv)}"
    for a in cmd.argv[1:]:
        if a.startswith("EXP="):
            assert (ROOT / "experiments" / f"{a[4:]}.yaml").is_file(), f"{cmd.page}:{cmd.line}: no experiment {a[4:]}"


@pytest.mark.parametrize("cmd", [c for c in ALL if c.argv[0] == "metaseg" and not c.quick],
                         ids=lambda c: f"{c.page}:{c.line}")
def test_metaseg_command_matches_its_help(cmd):
    where = f"{cmd.page}:{cmd.line}: {shlex.join(cmd.argv)}"
    if "--threads" in cmd.argv[1:2] or any(a.startswith("--threads=") for a in cmd.argv[1:2]):
        assert "--threads" in help_text(), where
    words, rest = split_command(cmd.argv)
    assert words, where
    top = help_text()
    assert re.search(rf"\b{re.escape(words[0])}\b", top.split("positional arguments")[0]), f"{where}: no command {words[0]}"
    text = help_text(*words)
    listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w.-]*)", text))
    missing = [o for o in options(rest) if o not in listed]
    if missing and words == ["meta-train"] and all("." in o for o in missing):
        # nested keys of a dict-valued option are not listed by LightningCLI's help: let it parse them
        proc = metaseg([*cmd.argv[1:], "--print_config"])
        assert proc.returncode == 0, f"{where}: {proc.stderr.strip()[-500:]}"
        missing = []
    assert not missing, f"{where}: {missing} not in `metaseg {' '.join(words)} --help`"


@pytest.mark.parametrize("cmd", [c for c in ALL if c.argv[0] == "metaseg" and c.quick],
                         ids=lambda c: f"{c.page}:{c.line}")
def test_quick_command_runs(cmd, tmp_path):
    e = env()
    e["METASEG_CACHE"] = str(tmp_path / "cache")  # the first run on a dataset fills a cache: not the user's
    proc = metaseg(cmd.argv[1:], env=e)
    where = f"{cmd.page}:{cmd.line}: {shlex.join(cmd.argv)}"
    assert proc.returncode == 0, f"{where} exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    if cmd.expected:
        assert proc.stdout.rstrip("\n").split("\n") == cmd.expected, f"{where}: output differs from the page"


@pytest.mark.parametrize("page", PAGES + ["docs/results.md"])
def test_relative_links_resolve(page):
    """A moved section keeps working links (paths are relative to the page, as GitHub renders them)."""
    text = (ROOT / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", text):
        if not re.match(r"^[a-z]+:", target):
            assert ((ROOT / page).parent / target).exists(), f"{page} links {target}, which does not exist"

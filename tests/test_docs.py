"""docs/backward.md quotes the code it explains: the quotes must still be in the source.

A fenced code block whose previous non-blank line is a backticked path, e.g.

    `tinygrad_gpt/kernels/reference.py`
    ```python
    ...
    ```

is a quote of that file: each of its non-blank lines must be a line of the file (leading and
trailing whitespace aside), in the same order. A line that is just `...` marks lines left out.
Unannotated ```python blocks are examples: they must run.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "backward.md"
PATH_LINE = re.compile(r"^`([\w./-]+\.py)`:?$")


def blocks(text):
    """(path or None, language, [lines], line number of the fence) for each fenced block."""
    lines = text.splitlines()
    out, i, previous = [], 0, None
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            language, start, body = line[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"{DOC.name}:{start}: unclosed code block")
            m = PATH_LINE.match(previous or "")
            out.append((m.group(1) if m else None, language, body, start))
            previous = None
        elif line.strip():
            previous = line.strip()
        i += 1
    return out


QUOTES = [b for b in blocks(DOC.read_text(encoding="utf-8")) if b[0] is not None]


def test_the_doc_quotes_every_file_it_explains():
    quoted = {path for path, *_ in QUOTES}
    assert {"tinygrad_gpt/tensor.py", "tinygrad_gpt/ops.py", "tinygrad_gpt/kernels/reference.py"} <= quoted
    assert len(QUOTES) >= 10, f"only {len(QUOTES)} quoted blocks found: is the path line format intact?"


@pytest.mark.parametrize("path, language, body, fence_line", QUOTES,
                         ids=[f"{p}@doc-line-{n}" for p, _, _, n in QUOTES])
def test_quoted_code_appears_verbatim_in_the_source(path, language, body, fence_line):
    source = ROOT / path
    assert source.is_file(), f"docs/backward.md:{fence_line} quotes {path}, which does not exist"
    file_lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
    position = 0
    for k, line in enumerate(body):
        want = line.strip()
        if not want or want == "...":
            continue
        try:
            position = file_lines.index(want, position) + 1
        except ValueError:
            anywhere = want in file_lines
            raise AssertionError(
                f"docs/backward.md:{fence_line + k + 1} quotes a line that is "
                f"{'out of order in' if anywhere else 'no longer in'} {path}:\n    {want}\n"
                f"update the quote (or the derivation next to it) to match the code") from None


def test_the_python_examples_in_the_doc_run():
    examples = [body for path, language, body, _ in blocks(DOC.read_text(encoding="utf-8"))
                if path is None and language == "python"]
    assert examples
    for body in examples:
        exec(compile("\n".join(body), str(DOC), "exec"), {})


# ----------------------------------------------------------------------------- sample listings, commands
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]        # the README and every docs/ page


def readme_listings():
    """(page:line, command line, [expected lines]) for each block of README.md or a docs/ page
    whose first line is `$ python examples/explain_backward.py ...`."""
    found = []
    for page in PAGES:
        for path, language, body, start in blocks(page.read_text(encoding="utf-8")):
            if body and body[0].startswith("$ python examples/explain_backward.py"):
                found.append((f"{page.relative_to(ROOT)}:{start}", body[0][2:], body[1:]))
    return found


def test_the_docs_show_explain_listings_with_their_commands():
    where = {w.split(":")[0] for w, _, _ in readme_listings()}
    assert "docs/watching-backward.md" in where, \
        "docs/watching-backward.md lost its `$ python examples/explain_backward.py ...` listings"
    assert len(readme_listings()) >= 2


@pytest.mark.parametrize("where, command, expected", readme_listings(), ids=[w for w, _, _ in readme_listings()])
def test_the_readme_listing_is_what_its_command_prints(where, command, expected, monkeypatch):
    """Every line of the block (but `...`) must be a line of the command's output, in order:
    rerun the command from the repository's root and paste its lines when this fails."""
    import io
    import shlex
    from tinygrad_gpt import explain
    argv = shlex.split(command)
    assert argv[:2] == ["python", "examples/explain_backward.py"], command
    monkeypatch.chdir(ROOT)                          # the command's paths are relative to the root
    out = io.StringIO()
    assert explain.main(argv[2:], file=out) == 0
    printed = [line.rstrip() for line in out.getvalue().splitlines()]
    position = 0
    for k, line in enumerate(expected):
        want = line.rstrip()
        if want.strip() == "...":
            continue
        try:
            position = printed.index(want, position) + 1
        except ValueError:
            raise AssertionError(
                f"{where} (+{k + 2} lines) is not what `{command}` prints "
                f"({'out of order' if want in printed else 'no such line'}):\n    {want}\n"
                "rerun the command and paste its output") from None


# every `python examples/X.py ...` line of a bash block names flags its command has
COMMANDS = {"pretrain": "tinygrad_gpt.cli.pretrain.flags", "generate": "tinygrad_gpt.cli.generate",
            "prepare_data": "tinygrad_gpt.cli.prepare_data", "explain_backward": "tinygrad_gpt.explain.cli",
            "plot": "tinygrad_gpt.cli.plot", "finetune_classifier": "tinygrad_gpt.cli.finetune:classifier_parser",
            "finetune_instruct": "tinygrad_gpt.cli.finetune:instruct_parser"}


def command_lines():
    """(page:line, command name, [flags]) for each `python examples/NAME.py ...` in a bash block
    (after `mpirun ...` too; `\\` continuations joined)."""
    import shlex
    found = []
    for page in PAGES:
        for path, language, body, start in blocks(page.read_text(encoding="utf-8")):
            if language != "bash":
                continue
            joined, k = [], 0
            for k, line in enumerate(body):
                if joined and joined[-1][1].endswith("\\"):
                    joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
                else:
                    joined.append((start + k + 1, line.strip()))
            for n, line in joined:
                words = shlex.split(line.split(" # ")[0].split("  #")[0], comments=True)
                if "python" not in words:
                    continue
                script = words[words.index("python") + 1] if words.index("python") + 1 < len(words) else ""
                name = Path(script).stem
                if script.startswith("examples/") and name in COMMANDS:
                    found.append((f"{page.relative_to(ROOT)}:{n}", name,
                                  [w.split("=")[0] for w in words if w.startswith("--")]))
    return found


def test_the_docs_run_every_command():
    assert {name for _, name, _ in command_lines()} == set(COMMANDS)


@pytest.mark.parametrize("where, name, flags", command_lines(), ids=[w for w, _, _ in command_lines()])
def test_every_documented_command_line_uses_flags_its_command_has(where, name, flags):
    import importlib
    module, _, make = COMMANDS[name].partition(":")
    parser = getattr(importlib.import_module(module), make or "build_parser")()
    known = {option for action in parser._actions for option in action.option_strings}
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{where}: examples/{name}.py has no {', '.join(unknown)}"


# ----------------------------------------------------------------------------- every explain listing's code locations
LISTING_ROW = re.compile(r"^\s*(\d+)\s+([A-Z]\w*)\s+\S+\s+([\w./-]+\.py):(\d+)(\s|$)")


def explain_listings():
    """(document, fence line, [rows]) for each block, in README.md and docs/*.md, that holds an
    explain listing (its header names the `backward code` column): the `--book` listing, which
    has no `$ command` line, as well as the `$ python examples/explain_backward.py` ones."""
    found = []
    for doc in [README] + sorted((ROOT / "docs").glob("*.md")):
        for _, _, body, start in blocks(doc.read_text(encoding="utf-8")):
            if any("step" in line and "backward code" in line for line in body):
                rows = [(start + k + 1, m.groups()[:4]) for k, line in enumerate(body)
                        if (m := LISTING_ROW.match(line))]
                found.append((doc.relative_to(ROOT).as_posix(), start, rows))
    return found


def test_the_docs_show_explain_listings():
    listings = explain_listings()
    assert any(rows for *_, rows in listings), "no explain listing found in README.md or docs/*.md"


@pytest.mark.parametrize("doc, fence_line, rows", explain_listings(),
                         ids=[f"{d}-line-{n}" for d, n, _ in explain_listings()])
def test_every_listed_backward_code_location_is_that_ops_backward(doc, fence_line, rows):
    """A listing row `7  Mean  final_norm  tinygrad_gpt/ops.py:127` must point at the `def
    backward(` of class Mean: a line number off by one is a listing pasted before the file moved."""
    wrong = []
    for line_no, (step, op, path, line) in rows:
        source = (ROOT / path).read_text(encoding="utf-8").splitlines()
        k = int(line) - 1
        here = source[k].strip() if k < len(source) else "(past the end of the file)"
        owner = next((m.group(1) for s in reversed(source[:k]) if (m := re.match(r"class (\w+)\b", s))), None)
        if not here.startswith("def backward(") or owner != op:
            right = [n + 1 for n, s in enumerate(source) if s.strip().startswith("def backward(")
                     and next((m.group(1) for t in reversed(source[:n]) if (m := re.match(r"class (\w+)\b", t))),
                              None) == op]
            wrong.append(f"{doc}:{line_no}: step {step} {op} says {path}:{line} ({here!r}); "
                         f"{op}.backward is at {', '.join(f'{path}:{r}' for r in right) or 'no line of that file'}")
    assert not wrong, "\n".join(wrong)

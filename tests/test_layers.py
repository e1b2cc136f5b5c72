"""The rooms' import rules (docs: STYLE.md, "Layers point one way"), read from the source with
ast, so a lazy import inside a function counts as much as one at the top."""
import ast
from pathlib import Path

import tinygrad_gpt

PKG = Path(tinygrad_gpt.__file__).parent


def imported_rooms(name):
    """The package modules that tinygrad_gpt/<name>.py imports, anywhere in the file."""
    tree = ast.parse((PKG / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinygrad_gpt"):
            found.add((node.module.split(".") + [""])[1])
    return found


def test_checkpoint_imports_nothing_from_train():
    assert not {"train", "pretrain"} & imported_rooms("checkpoint")


def test_pretrained_imports_neither_checkpoint_nor_train():
    assert not {"checkpoint", "train", "pretrain"} & imported_rooms("pretrained")


def test_model_and_nn_import_no_higher_room():
    higher = {"pretrained", "checkpoint", "train", "pretrain", "generation", "explain"}
    assert not higher & imported_rooms("model")
    assert not (higher | {"model"}) & imported_rooms("nn")


def test_fileio_imports_no_room():
    assert imported_rooms("fileio") == set()


def test_generation_has_no_forward_of_its_own():
    tree = ast.parse((PKG / "generation.py").read_text(encoding="utf-8"))
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not {"forward", "forward_cached", "_attend"} & names
    calls = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not {"W_query", "W_key", "W_value", "trf_blocks", "norm1", "ff"} & calls


def test_readme_spelling_gptmodel_from_pretrained_still_works():
    from tinygrad_gpt import GPTModel, pretrained
    assert GPTModel.from_pretrained.__func__ is pretrained.model_from_pretrained
    assert GPTModel.save_pretrained is pretrained.save_pretrained

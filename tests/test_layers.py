"""The rooms' import rules (docs: STYLE.md, "Layers point one way"), read from the source with
ast, so a lazy import inside a function counts as much as one at the top."""
import ast

import pytest
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


# the commands: the CLI package and the explain command's own CLI module
COMMANDS = ("tinygrad_gpt.cli", "tinygrad_gpt.explain.cli", "tinygrad_gpt.explain.__init__", "tinygrad_gpt.explain.__main__")


def absolute_imports(path, pkg=PKG):
    """The dotted package modules a file imports (relative imports resolved), lazy ones too."""
    dotted = ".".join(("tinygrad_gpt",) + path.relative_to(pkg).with_suffix("").parts)
    package = dotted.rsplit(".", 1)[0] if path.name != "__init__.py" else dotted.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return dotted, {m for m in found if m.startswith("tinygrad_gpt")}


def cli_importers(pkg=PKG):
    """The modules outside the commands that import tinygrad_gpt.cli (or anything in it)."""
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        dotted, mods = absolute_imports(path, pkg)
        if dotted.startswith(COMMANDS):
            continue
        hits = sorted(m for m in mods if m == "tinygrad_gpt.cli" or m.startswith("tinygrad_gpt.cli."))
        if hits:
            bad.append(f"{dotted} imports {hits[0]}")
    return bad


def test_no_module_outside_the_commands_imports_the_cli():
    """The library speaks in plain exceptions with their facts; the commands name the flags."""
    assert not cli_importers(), cli_importers()


def test_the_cli_import_check_can_fail(tmp_path):
    """The check above catches a library module that imports the CLI (a relative import, lazily,
    or from a subpackage), and lets the commands import it."""
    pkg = tmp_path / "tinygrad_gpt"
    for name, text in (("room.py", "def f():\n    from .cli import UsageError\n"),
                       ("explain/deep.py", "from ..cli.pretrain import flags\n"),
                       ("explain/cli.py", "from ..cli import UsageError\n"),
                       ("cli/__init__.py", "from ..room import f\n")):
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text, encoding="utf-8")
    assert cli_importers(pkg) == ["tinygrad_gpt.explain.deep imports tinygrad_gpt.cli.pretrain",
                                  "tinygrad_gpt.room imports tinygrad_gpt.cli"]


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


def test_saved_models_are_functions_and_nothing_patches_gptmodel():
    """from_pretrained / save_pretrained / load_model are module functions at the package's
    face (the README spells them so); GPTModel gets no methods bound from outside model.py."""
    import tinygrad_gpt
    from tinygrad_gpt import GPTModel, loading, pretrained
    assert tinygrad_gpt.from_pretrained is pretrained.from_pretrained
    assert tinygrad_gpt.save_pretrained is pretrained.save_pretrained
    assert tinygrad_gpt.load_model is loading.load_model
    assert not hasattr(GPTModel, "from_pretrained") and not hasattr(GPTModel, "save_pretrained")
    face = ast.parse((PKG / "__init__.py").read_text(encoding="utf-8"))
    patched = [n for n in ast.walk(face) if isinstance(n, ast.Assign)
               and any(isinstance(t, ast.Attribute) for t in n.targets)]
    assert not patched, "tinygrad_gpt/__init__.py assigns attributes onto a class"


# ----------------------------------------------------------------------------- docs/architecture.md
ARCHITECTURE = PKG.parent / "docs" / "architecture.md"
ENGINE_CIRCLE = {("tensor", "ops"), ("tensor", "functional")}   # the one circle the doc names


def documented_layers():
    """{room: layer} from the table between the layers:begin/end markers of docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = text.split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    layers = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            layers[cells[1]] = int(cells[0])
    return layers


def room_imports():
    """{room: set of rooms it imports}, every import of the package (lazy ones too), resolved
    to the longest documented room name ("explain.trace", else "explain")."""
    rooms = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts == ["__init__"]:
            continue                                          # the package's face, not a room
        room = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = parts[:-1]                                     # the package the file sits in
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                target = base + (node.module.split(".") if node.module else [])
                found.update([".".join(target + [a.name]) for a in node.names] + [".".join(target)])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinygrad_gpt."):
                target = node.module.split(".")[1:]
                found.update([".".join(target + [a.name]) for a in node.names] + [".".join(target)])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("tinygrad_gpt."))
        rooms[room] = found
    return rooms


def resolve(name, layers):
    """The documented room a dotted import name lands in, or None (a name inside a room)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in layers:
            return ".".join(parts[:n])
    return None


def test_every_room_of_the_package_is_on_the_architecture_drawing():
    layers, rooms = documented_layers(), room_imports()
    assert len(layers) > 20, "the layer table of docs/architecture.md was not found"
    missing = sorted(set(rooms) - set(layers))
    stale = sorted(set(layers) - set(rooms))
    assert not missing, f"rooms not in docs/architecture.md's layer table: {missing}"
    assert not stale, f"docs/architecture.md lists rooms that do not exist: {stale}"


def test_every_import_points_to_the_same_layer_or_a_lower_one():
    layers = documented_layers()
    upward = set()
    for room, names in room_imports().items():
        for name in names:
            target = resolve(name, layers)
            if target is None or target == room or (room, target) in ENGINE_CIRCLE:
                continue
            if layers[target] > layers[room]:
                upward.add(f"{room} (layer {layers[room]}) imports {target} (layer {layers[target]})")
    print(f"{sum(map(len, room_imports().values()))} imports checked")
    assert not upward, "imports that point up:\n" + "\n".join(sorted(upward))


def test_the_layer_check_catches_an_upward_import(monkeypatch):
    """The check above can fail: model importing train is reported."""
    real = room_imports()
    monkeypatch.setitem(globals(), "room_imports", lambda: {**real, "model": real["model"] | {"train"}})
    with pytest.raises(AssertionError, match=r"model \(layer 4\) imports train \(layer 7\)"):
        test_every_import_points_to_the_same_layer_or_a_lower_one()


# ----------------------------------------------------------------------------- no circles but the engine's
ENGINE_CYCLE = {"tensor", "ops", "functional"}


def room_graph():
    """{room: rooms it imports}, like room_imports but exact about `from . import name`: an edge
    to the module `name` when it is one (Python has its package initialised anyway, before any
    of its modules: that is no circle), to the package only for a name defined in its __init__
    (a `from . import K` inside kernels/ would be one). Lazy imports count."""
    layers = documented_layers()
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts == ["__init__"]:
            continue
        room = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = parts[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tinygrad_gpt.")):
                if node.level:
                    base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                    target = base + (node.module.split(".") if node.module else [])
                else:
                    target = node.module.split(".")[1:]
                for alias in node.names:
                    module = ".".join(target + [alias.name])
                    edges.add(module if module in layers else resolve(".".join(target), layers))
            elif isinstance(node, ast.Import):
                edges.update(resolve(a.name.split(".", 1)[1], layers) for a in node.names
                             if a.name.startswith("tinygrad_gpt."))
        graph[room] = {e for e in edges if e is not None and e != room}
    return graph


def import_cycles(graph):
    """The strongly connected components (Tarjan) with more than one room of an import graph
    {room: rooms it imports}, each a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):                                   # iterative Tarjan would be longer; depth < 100 here
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_only_import_cycle_is_the_engines():
    cycles = import_cycles(room_graph())
    unexpected = [c for c in cycles if set(c) != ENGINE_CYCLE]
    assert not unexpected, "import cycles (docs/architecture.md names only the engine's):\n" + \
        "\n".join(" -> ".join(c) for c in unexpected)
    assert [c for c in cycles if set(c) == ENGINE_CYCLE], "the engine's circle was not found: is the check blind?"


def test_the_cycle_check_catches_a_new_circle(monkeypatch):
    """explain.book importing explain.cli back (the circle that torch.book once made) fails."""
    real = room_graph()
    monkeypatch.setitem(globals(), "room_graph", lambda: {**real, "explain.book": real["explain.book"] | {"explain.cli"}})
    with pytest.raises(AssertionError, match=r"explain\.book -> explain\.cli"):
        test_the_only_import_cycle_is_the_engines()

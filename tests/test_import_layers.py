"""The import graph runs one way: csrc -> ops -> model -> checkpoint -> training/inference/serving -> cli.
A module of ops/ or model/ that imports a higher layer would make the kernels depend on the trainer;
one of inference/eval/export/serve that imports training/ would load models through the trainer."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kr_mini_llm"
HIGHER = ("checkpoint", "training", "inference", "serve", "lora", "export", "eval", "cli")


def imported_packages(path: Path) -> set[str]:
    """Top-level kr_mini_llm subpackages that a module of ops/ or model/ imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 2:  # from ..training import x (relative to kr_mini_llm/<layer>/)
                found.add((node.module or "").split(".")[0])
            elif node.level == 0 and (node.module or "").startswith("kr_mini_llm."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("kr_mini_llm.")}
    return found


def test_ops_and_model_import_no_higher_layer():
    offenders = {}
    for layer in ("ops", "model"):
        for path in (PACKAGE / layer).rglob("*.py"):
            higher = imported_packages(path) & set(HIGHER)
            if higher:
                offenders[str(path.relative_to(PACKAGE))] = sorted(higher)
    assert offenders == {}, f"ops/ and model/ must not import these layers: {offenders}"


def test_device_module_lives_at_package_level():
    # inference and training both choose a device; the module belongs to neither
    import kr_mini_llm.device as device

    assert device.pick_device("cpu").type == "cpu"
    assert not (PACKAGE / "training" / "device.py").exists()


def test_subpackages_import_each_other_one_way():
    # e.g. export fuses adapters (imports lora), so lora's fuse takes export's HF writer as an argument
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1 and path.name != "__main__.py":  # `python -m kr_mini_llm.lora` runs cli/, the top layer
            graph.setdefault(parts[0], set()).update(imported_packages(path) - {parts[0]})
    assert_no_circle(graph)


def assert_no_circle(graph: dict) -> None:
    """Fails with the circle's path if `graph` (name -> names it imports) has one."""
    done, active = set(), []

    def visit(name):
        assert name not in active, f"import circle: {' -> '.join(active[active.index(name):] + [name])}"
        if name in done or name not in graph:
            return
        active.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        active.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


# -- model loading goes through checkpoint/, a layer below training/ ----------------------------
# training -> checkpoint -> ops/model/io/data.tokenizer; inference, eval, export and serve load
# models through checkpoint.load_model_dir and never need the trainer.
MODEL_LOADING_LAYERS = ("inference", "eval", "export", "serve")
# data.morphemes: train_tokenizer's Kiwi marks, a leaf module (errors only) imported when training a tokenizer
CHECKPOINT_MAY_IMPORT = ("checkpoint", "ops", "model", "io", "device", "errors", "_version", "data.tokenizer",
                         "data.morphemes")


def module_file(name: str) -> Path | None:
    """The file of the kr_mini_llm module `name` ("training.trainer"; "" is kr_mini_llm itself)."""
    base = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path) -> set[str]:
    """The kr_mini_llm modules that importing `path` runs, by name below kr_mini_llm: what it
    imports, lazy imports inside functions included, and the packages above each (their __init__)."""
    package = path.relative_to(PACKAGE).parts[:-1]
    named = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level <= len(package) + 1 else None
                module = node.module
            elif node.module == "kr_mini_llm" or (node.module or "").startswith("kr_mini_llm."):
                base, module = (), node.module[len("kr_mini_llm."):] if "." in node.module else None
            else:
                continue
            if base is None:
                continue
            target = ".".join([*base, *([module] if module else [])])
            named.add(target)
            named |= {f"{target}.{a.name}" if target else a.name for a in node.names}  # `from . import x`
        elif isinstance(node, ast.Import):
            named |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("kr_mini_llm.")}
    found = set()
    for name in named:
        pieces = name.split(".")
        found |= {".".join(pieces[:i]) for i in range(1, len(pieces) + 1)}
    return {name for name in found if module_file(name) is not None}


def import_chains(start: str) -> dict[str, str | None]:
    """Every kr_mini_llm module that importing `start` may run (following lazy imports too), each
    with the module that imports it (None for `start`)."""
    parent, todo = {start: None}, [start]
    while todo:
        name = todo.pop()
        for imported in sorted(module_imports(module_file(name))):
            if imported not in parent:
                parent[imported] = name
                todo.append(imported)
    return parent


def chain_to(parent: dict, name: str) -> str:
    steps = [name]
    while parent[steps[-1]] is not None:
        steps.append(parent[steps[-1]])
    return " -> ".join(reversed(steps))


def test_model_loading_layers_never_import_training():
    offenders = {}
    for layer in MODEL_LOADING_LAYERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            if path.name == "__main__.py":  # `python -m kr_mini_llm.serve` runs the command line, the top layer
                continue
            parent = import_chains(module_name(path))
            reached = sorted(n for n in parent if n.split(".")[0] == "training")
            if reached:
                offenders[module_name(path)] = chain_to(parent, reached[0])
    assert offenders == {}, f"these modules reach training/ (load models through checkpoint/): {offenders}"


def test_checkpoint_imports_no_higher_layer():
    def allowed(name: str) -> bool:
        return name in ("", "data") or any(name == a or name.startswith(a + ".") for a in CHECKPOINT_MAY_IMPORT)

    offenders = {}
    for path in sorted((PACKAGE / "checkpoint").rglob("*.py")):
        parent = import_chains(module_name(path))
        beyond = sorted(n for n in parent if not allowed(n))
        if beyond:
            offenders[module_name(path)] = chain_to(parent, beyond[0])
    assert (PACKAGE / "checkpoint" / "__init__.py").is_file()
    assert offenders == {}, f"checkpoint/ may import only {CHECKPOINT_MAY_IMPORT}: {offenders}"

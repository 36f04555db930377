"""The import graph runs one way: csrc -> ops -> model -> training/inference/serving -> scripts.
A module of ops/ or model/ that imports a higher layer would make the kernels depend on the trainer."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kr_mini_llm"
HIGHER = ("training", "inference", "serve", "lora", "export", "eval", "cli")


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

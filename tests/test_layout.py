"""Package layout: no module of usspectrum imports, directly or through
others, a module that imports it back (at any depth, function-level imports
included), and the subpackages stand in layers that only import downwards."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "usspectrum"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[:len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in _imports(path, name) if t in paths and t != name}
            for name, path in paths.items()}


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_modules():
    graph = _graph()
    # the package root re-exports everything; cycles through it are not layering
    graph = {k: v - {"usspectrum"} for k, v in graph.items() if k != "usspectrum"}
    assert "usspectrum.spectrum.calibration" in graph and "usspectrum.models.registry" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


# the path of the data, lowest first: a subpackage may import only those before it
LAYERS = ["errors", "runtime", "nn", "models", "io", "spectrum", "training", "demo", "cli",
          "__main__"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "usspectrum"


def test_subpackages_import_only_lower_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                    if _layer(a) != "usspectrum" and _layer(b) != "usspectrum"
                    and LAYERS.index(_layer(b)) > LAYERS.index(_layer(a)))
    assert not upward, upward
    assert {_layer(m) for m in _graph()} == set(LAYERS) | {"usspectrum"}


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
    assert not long, long

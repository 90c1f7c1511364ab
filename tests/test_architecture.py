"""The package's import structure (issue #24): components never import the application (only the shared key
vocabulary, ``modmimic.keys``), and no module of the package imports, at any depth or inside a function, a module
that imports it back."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_files():
    """``{dotted module name: file}`` of the package as installed (components/ is modmimic.components)."""
    out = {}
    for top in ("modmimic", "components"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    name = ("modmimic." + rel) if top == "components" else rel
                    out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = os.path.join(folder, f)
    return out


def imported(path: str, known) -> set:
    """Modules of the package that ``path`` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m in known}


def test_components_import_nothing_of_the_application():
    mods = module_files()
    allowed = ("modmimic.components", "modmimic.keys", "modmimic")
    for name, path in mods.items():
        if name.startswith("modmimic.components"):
            bad = {m for m in imported(path, mods) if not (m.startswith("modmimic.components") or m in allowed)}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycles():
    mods = module_files()
    graph = {m: imported(p, mods) - {m, "modmimic"} for m, p in mods.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)

"""The package's shape, held: its own imports run one way (imports inside functions counted,
and none of its own made there), how a stop ends is decided in one module, few functions
take many parameters, the formatter owns the layout, and tests share helpers one way."""

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "vitsweep"


def module_name(path: Path) -> str:
    parts = ("vitsweep", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts).removesuffix(".__init__")


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def own_imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules a module imports, anywhere in it: ``from a import b`` counts as
    ``a.b`` where that is a module, else as ``a``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitsweep"):
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= subs or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vitsweep")}
    return found


def test_the_packages_own_imports_form_no_circle():
    trees = sources()
    graph = {name: own_imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"an import circle: {' -> '.join([*path, name])}"
        if name in done:
            return
        for other in sorted(graph.get(name, ())):
            visit(other, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_imports_its_own_package_inside_a_function():
    for name, tree in sources().items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                assert not (module or "").startswith("vitsweep"), f"{name}.{function.name}"


def test_how_a_process_exits_is_decided_in_vitsweep_errors_alone():
    """Only vitsweep.errors raises SystemExit or ends the process; an entry point may only
    hand on what its main returned (``sys.exit(main())``)."""
    exits = {"SystemExit", "exit", "_exit"}
    for path in sorted((ROOT / "src").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            called = node.func if isinstance(node, ast.Call) else None
            name = getattr(called, "id", getattr(called, "attr", None))
            if name not in exits:
                continue
            handed_on = ast.unparse(node) == "sys.exit(main())"
            assert handed_on, f"{path.relative_to(ROOT)}:{node.lineno} decides an exit itself"


def test_at_most_three_functions_take_more_than_six_parameters():
    many = []
    for name, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                a = node.args
                names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
                if len([n for n in names if n not in ("self", "cls")]) > 6:
                    many.append(f"{name}.{node.name}")
    assert len(many) <= 3, many


def test_the_formatter_owns_the_layout():
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    marks = ("# fmt: " + "skip", "# fmt: " + "off")
    skips = sum(p.read_text().count(mark) for p in files for mark in marks)
    assert skips <= 10


def test_tests_share_helpers_through_tests_helpers_only():
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                assert node.module == "tests.helpers", f"{path.name} imports {node.module}"

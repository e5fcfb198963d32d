"""The code stays in parts a newcomer can read: no module of zray over about
600 lines, no class over about 450, no function over about 80."""

import ast
import pathlib

import zray

ROOT = pathlib.Path(zray.__file__).parent
LIMITS = {"module": 600, "class": 450, "function": 80}


def oversized():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(ROOT.parent)
        lines = source.count("\n") + 1
        if lines > LIMITS["module"]:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                kind = "class"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = "function"
            else:
                continue
            length = node.end_lineno - node.lineno + 1
            if length > LIMITS[kind]:
                found.append(f"{name}:{node.lineno} {kind} {node.name}: {length} lines")
    return found


def test_no_module_class_or_function_outgrows_its_limit():
    assert oversized() == []

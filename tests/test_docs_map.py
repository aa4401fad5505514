"""The docs name what exists: the README's layout lists exactly the package's files and the sql/ and
notebooks/ files, and every path, `module.py: name` and `Class.attribute` that README.md and docs/*.md
mention is in the tree, as is every path the package's docstrings and comments mention. A module renamed or a function moved fails here until the docs follow."""

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiquery"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A repository path as the docs write it: aiquery/_engine.py, tests/fakeserver.py, benchmarks/RESULTS.md.
PATH = re.compile(r"(?<![\w/.~$-])((?:aiquery|tests|benchmarks|sql|notebooks|docs|\.ci)/[\w./-]*\w)")
# `_engine.py: Engine.run, _over_budget` (backticked: every name) or _engine.py: Engine.run (the first name).
NAMED = re.compile(r"(?<![\w/])(?:aiquery/)?(\w+\.py): ([A-Za-z_][\w.]*(?:, [A-Za-z_][\w.]*)*)")


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def bullets(text: str, indent: str) -> list[str]:
    """The bullets of a Markdown list at this indentation, each with its continuation lines."""
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith(indent + "- "):
            found.append(line[len(indent) + 2:])
        elif found and line.startswith(indent + " "):
            found[-1] += "\n" + line
        elif found and line.strip():
            found.append("")  # the list ended
    return [b for b in found if b]


def names_in(text: str, pattern: str) -> set[str]:
    return set(re.findall(rf"`({pattern})`", text))


@cache
def definitions(module: str) -> dict[str, set[str]]:
    """Top-level names of a module of the package, and for each class the names in its body or set
    on self in its methods ("" maps to the module's own names)."""
    tree = ast.parse((PACKAGE / module).read_text())
    names: dict[str, set[str]] = {"": set()}

    def assigned(node: ast.AST) -> set[str]:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[""].add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names[""] |= assigned(node)
        if isinstance(node, ast.ClassDef):
            members = names[node.name] = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    members.add(item.name)
                elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                    members |= assigned(item)
                elif isinstance(item, ast.Expr) and isinstance(item.value, ast.Constant):
                    continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self" \
                        and isinstance(sub.ctx, ast.Store):
                    members.add(sub.attr)
    return names


def exists(module: str, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    defined = definitions(module)
    if head not in defined[""]:
        return False
    return not rest or (head in defined and rest in defined[head])


def classes() -> dict[str, str]:
    """Each class of the package -> its module."""
    return {name: module.name for module in PACKAGE.glob("*.py") for name in definitions(module.name) if name}


def test_the_readme_layout_lists_exactly_the_tree():
    layout = section((ROOT / "README.md").read_text(), "## Layout")
    tops = {re.match(r"`([^`]+)`", b).group(1): b for b in bullets(layout, "") if b.startswith("`")}
    package = bullets(tops["aiquery/"], "  ")
    macros = [b for b in package if b.startswith("`sql/`")]
    assert len(macros) == 1, "the aiquery/ bullet has one sub-bullet for its sql/ macros"
    modules = set().union(*(names_in(b, r"\w+\.py") for b in package if b not in macros))
    assert modules == {p.name for p in PACKAGE.glob("*.py")}
    assert names_in(macros[0], r"\w+\.sql") == {p.name for p in (PACKAGE / "sql").glob("*.sql")}
    assert names_in(tops["sql/"], r"\w+\.sql") == {p.name for p in (ROOT / "sql").glob("*.sql")}
    assert names_in(tops["notebooks/"], r"\w+\.ipynb") == {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}


def paths_in(text: str) -> set[str]:
    return {m.group(1) for m in PATH.finditer(text) if text[m.end():m.end() + 1] not in ("*", "{")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_the_docs_name_exists(doc):
    paths = paths_in(doc.read_text())
    assert paths, f"{doc.name} names no file"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_every_path_the_package_comments_name_exists():
    sources = [*PACKAGE.glob("*.py"), *(PACKAGE / "sql").glob("*.sql")]
    missing = sorted(f"{source.name}: {p}" for source in sources for p in paths_in(source.read_text())
                     if not (ROOT / p).exists())
    assert not missing, f"docstrings and comments name files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_function_the_docs_name_exists(doc):
    text = doc.read_text()
    quoted = re.findall(r"`([^`\n]+)`", text)
    named = [(m.group(1), name) for span in quoted for m in NAMED.finditer(span) for name in m.group(2).split(", ")]
    named += [(m.group(1), m.group(2).split(", ")[0]) for m in NAMED.finditer(re.sub(r"`[^`\n]+`", "", text))]
    known = classes()
    members = [re.fullmatch(r"([A-Z]\w+)\.(\w+)(?:\(\))?", span) for span in quoted]
    named += [(known[m.group(1)], f"{m.group(1)}.{m.group(2)}") for m in members if m and m.group(1) in known]
    assert not {m for m, _ in named if not (PACKAGE / m).exists()}, f"{doc.name} names modules that do not exist"
    missing = sorted({f"{module}: {name}" for module, name in named if not exists(module, name)})
    assert not missing, f"{doc.name} names what the package does not define: {missing}"
    if doc.name == "ARCHITECTURE.md":
        assert len({n for _, n in named}) > 100, "ARCHITECTURE.md names modules' functions: `module.py: name`"


def titles(doc: Path) -> list[str]:
    """The sections a reader can be sent to: headings, and the bold lead of a paragraph or bullet."""
    text = doc.read_text()
    return [*re.findall(r"^#+ (.+)$", text, flags=re.M), *re.findall(r"^(?:- )?\*\*([^*]+?)\.?\*\*", text, flags=re.M)]


def test_every_section_a_reference_names_exists():
    """`see "Reading ahead"` in the README, `(README, "Scaling out with Spark")` in a docstring,
    `docs/ARCHITECTURE.md`, "Sending" in the README: each names a heading or a bold lead there."""
    readme, architecture = ROOT / "README.md", ROOT / "docs" / "ARCHITECTURE.md"
    files = [*DOCS, *PACKAGE.glob("*.py"), *(PACKAGE / "sql").glob("*.sql"), *(ROOT / "sql").glob("*.sql")]
    references = []
    for source in files:
        text = source.read_text()
        references += [(source.name, readme, r) for r in re.findall(r"README(?:\.md)?,? \(?\"([^\"]+)\"", text)]
        references += [(source.name, architecture, r) for r in re.findall(r"ARCHITECTURE\.md`?, \"([^\"]+)\"", text)]
        if source == readme:
            references += [(source.name, readme, r) for r in re.findall(r"\bsee \"([^\"]+)\"", text)]
    assert len(references) > 10
    references = [(name, doc, " ".join(title.split())) for name, doc, title in references]
    missing = [f"{name}: {doc.name}, {title!r}" for name, doc, title in references
               if not any(t == title or t.startswith(title + ":") or t.startswith(title + " ") for t in titles(doc))]
    assert not missing, f"references to sections that do not exist: {missing}"

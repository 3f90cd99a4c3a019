"""The project's import graph keeps its shape: no cycle between modules, the library never
imports the command-line wrappers in `data_prep/` or the configs, and configs are leaves.

Read from the source (every `import` statement, including those inside functions), so nothing
is imported to check it.
"""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ganime_jax", "data_prep", "configs")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package's `__init__` counts as a module)."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_project_modules():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_data_prep_or_configs():
    graph = _import_graph()
    upward = {(module, target) for module, targets in graph.items()
              if module.startswith("ganime_jax") for target in targets
              if target.split(".")[0] in ("data_prep", "configs")}
    assert upward == set()
    assert graph["data_prep.tokens"] & {"ganime_jax.train.token_dataset"}  # the graph is read


# The stages, in the order dependencies flow (a module may import its own stage and earlier
# ones); modules not named here (errors, commands, conditioning, generation, metrics, ...) are
# shared.
STAGES = (
    ("ganime_jax.data",),
    ("ganime_jax.models", "ganime_jax.losses"),
    ("ganime_jax.tokenizer", "ganime_jax.checkpointing", "ganime_jax.mesh",
     "ganime_jax.multihost"),
    ("ganime_jax.train",),
    ("ganime_jax.sample", "ganime_jax.evaluation", "ganime_jax.export", "ganime_jax.bundle",
     "ganime_jax.web_demo"),
    ("ganime_jax.cli",),
)


def _stage(module: str) -> int | None:
    for index, prefixes in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_dependencies_flow_from_data_to_models_tokenizer_training_inference_cli():
    backward = sorted((module, target) for module, targets in _import_graph().items()
                      for target in targets
                      if None not in (_stage(module), _stage(target))
                      and _stage(target) > _stage(module))
    assert backward == []
    assert _stage("ganime_jax.tokenizer") < _stage("ganime_jax.train.gpt_task") < _stage(
        "ganime_jax.sample")


def test_configs_import_only_ml_collections_and_other_configs():
    for path in sorted((REPO / "configs").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert imported <= {"ml_collections", "configs"}, (path.name, imported)

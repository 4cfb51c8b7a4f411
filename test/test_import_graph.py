"""The package's import graph, read with ``ast`` from every ``rsd_drive/*.py`` file (imports inside
functions included, and ``importlib.import_module`` of a string literal): no cycles, and every
arrow follows the layer order of docs/ARCHITECTURE.md ("## Layers"), read from that file.

Edges: ``import rsd_drive.a.b`` -> ``rsd_drive.a.b``; ``from rsd_drive.a import b`` ->
``rsd_drive.a.b`` when that is a module, else ``rsd_drive.a``; relative imports are resolved
against the importing module. Not seen: modules named by computed strings (the CLI's subcommand
table, ``bench.cli``'s f-string, ``model.__init__``'s lazy names) and subprocesses.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'rsd_drive'
ARCHITECTURE = REPO / 'docs' / 'ARCHITECTURE.md'
# What only a ROS 2 install provides (rosbags, which reads and writes bags, is plain Python).
ROS_RUNTIME = {'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'rosidl_runtime_py', 'launch',
               'launch_ros', 'tf2_ros'}
NO_ROS_LAYERS = ('base', 'core', 'tools')


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def package_modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _imports(tree, module: str, is_package: bool):
    """(name, fallback, line) for every import in ``tree``: the edge goes to ``name`` if that is
    a module, else to (the module holding) ``fallback``. ``from X import Y``: (X.Y, X)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.') if is_package else module.split('.')[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            for alias in node.names:
                yield f'{source}.{alias.name}', source, node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, 'attr', getattr(node.func, 'id', None)) == 'import_module'
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.args[0].value, node.args[0].value, node.lineno


@functools.lru_cache(maxsize=None)
def build_graph():
    """({module: {imported rsd_drive module: first line}}, {module: {external top name: line}})."""
    modules = package_modules()

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition('.')[0]
        return name

    graph, external = {}, {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges, ext = {}, {}
        for name, fallback, line in _imports(tree, module, path.name == '__init__.py'):
            if fallback == 'rsd_drive' or fallback.startswith('rsd_drive.'):
                target = name if name in modules else resolve(fallback)
                if target != module:
                    edges.setdefault(target, line)
            elif fallback:
                ext.setdefault(fallback.split('.')[0], line)
        graph[module], external[module] = edges, ext
    return graph, external


def find_cycle(graph: dict) -> list | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def cycles(graph: dict) -> list:
    """One cycle per group of modules that reach each other (strongly connected component)."""
    reach = {}

    def reachable(node):
        if node not in reach:
            seen, todo = set(), [node]
            while todo:
                for nxt in graph[todo.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            reach[node] = seen
        return reach[node]

    found, done = [], set()
    for node in sorted(graph):
        if node in done or node not in reachable(node):
            continue
        group = {n for n in reachable(node) if node in reachable(n)}
        done |= group
        found.append(find_cycle({n: {m: v for m, v in graph[n].items() if m in group}
                                 for n in sorted(group)}))
    return found


def format_cycle(graph: dict, cycle: list) -> str:
    return '\n'.join(f'  {a} -> {b}  (line {graph[a][b]})' for a, b in zip(cycle, cycle[1:]))


def read_layers() -> list:
    """[(layer, [units])] from the first code block under '## Layers' in ARCHITECTURE.md, top
    layer first; a unit is a first-level module or package of rsd_drive, or 'rsd_drive' (the
    package root)."""
    text = ARCHITECTURE.read_text()
    section = text.split('\n## Layers', 1)[1]
    block = re.search(r'```[a-z]*\n(.*?)```', section, re.S).group(1)
    rows = block.split('-+-', 1)[1].splitlines()[1:]  # below the header's rule
    layers = []
    for line in rows:
        if '|' not in line:
            continue
        name, units = line.split('|', 1)
        units = units.split('#', 1)[0]
        layers.append((name.strip(), [u.strip() for u in units.split(',') if u.strip()]))
    return layers


def unit(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else 'rsd_drive'


def layer_of() -> dict:
    """{unit: (rank, layer name)}, rank 0 at the bottom."""
    layers = read_layers()
    return {u: (len(layers) - 1 - i, name) for i, (name, units) in enumerate(layers)
            for u in units}


def test_no_import_cycles():
    graph, _ = build_graph()
    assert len(graph) > 50 and 'rsd_drive.model.planner' in graph  # the scan found the package
    found = cycles(graph)
    message = f'{len(found)} import cycles:\n' + '\n'.join(
        f'cycle {i + 1}:\n' + format_cycle(graph, c) for i, c in enumerate(found))
    if found:
        print(message)
    assert not found, message


def test_no_cycles_between_packages():
    """Folded to first-level packages (data, model, teacher, ...), the graph has no cycle either:
    each package sits wholly above the ones it uses."""
    graph, _ = build_graph()
    folded = {}
    for module, edges in graph.items():
        out = folded.setdefault(unit(module), {})
        for target, line in edges.items():
            if unit(target) != unit(module):
                out.setdefault(unit(target), f'{module} -> {target}, line {line}')
    cycle = find_cycle(folded)
    message = '' if cycle is None else 'package cycle:\n' + '\n'.join(
        f'  {a} -> {b}  ({folded[a][b]})' for a, b in zip(cycle, cycle[1:]))
    if cycle:
        print(message)
    assert cycle is None, message


def test_layers_cover_the_package():
    layers = layer_of()
    names = [u for _, units in read_layers() for u in units]
    assert len(names) == len(set(names)), f'a unit is in two layers: {names}'
    units = {unit(m) for m in package_modules()}
    assert units - set(layers) == set(), 'modules in no layer of ARCHITECTURE.md'
    assert set(layers) - units == set(), 'layers name modules that do not exist'


def test_imports_follow_the_layers():
    """A module imports only from its own layer or below (ARCHITECTURE.md, '## Layers')."""
    graph, _ = build_graph()
    layers = layer_of()
    wrong = []
    for module, edges in sorted(graph.items()):
        rank, name = layers[unit(module)]
        for target, line in sorted(edges.items()):
            target_rank, target_name = layers[unit(target)]
            if target_rank > rank:
                wrong.append(f'  {module} ({name}) imports {target} ({target_name}), '
                             f'line {line}')
    if wrong:
        print('imports against the layer order:\n' + '\n'.join(wrong))
    assert not wrong, 'imports against the layer order:\n' + '\n'.join(wrong)


def test_model_never_imports_deploy():
    graph, _ = build_graph()
    wrong = [f'  {m} imports {t}, line {line}' for m, edges in sorted(graph.items())
             if unit(m) == 'model' for t, line in sorted(edges.items()) if unit(t) == 'deploy']
    assert not wrong, 'model imports deploy:\n' + '\n'.join(wrong)


def test_lower_layers_never_import_ros():
    """base, core and tools run without a ROS 2 install: no rclpy, no message packages."""
    _, external = build_graph()
    layers = layer_of()
    wrong = [f'  {m} ({layers[unit(m)][1]}) imports {name}, line {line}'
             for m, names in sorted(external.items()) if layers[unit(m)][1] in NO_ROS_LAYERS
             for name, line in sorted(names.items())
             if name in ROS_RUNTIME or name.endswith('_msgs')]
    assert not wrong, 'ROS 2 imports below the ros layer:\n' + '\n'.join(wrong)


def test_scan_sees_function_level_and_relative_imports():
    """The scanner itself: an import inside a function and a relative import are edges."""
    tree = ast.parse('def f():\n    from . import b\n    import rsd_drive.x.y\n'
                     "    importlib.import_module('rsd_drive.z')\n")
    found = {(name, fallback) for name, fallback, _ in _imports(tree, 'rsd_drive.pkg.a', False)}
    assert found == {('rsd_drive.pkg.b', 'rsd_drive.pkg'), ('rsd_drive.x.y', 'rsd_drive.x.y'),
                     ('rsd_drive.z', 'rsd_drive.z')}
    assert find_cycle({'a': {'b': 1}, 'b': {'c': 2}, 'c': {'a': 3}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b': 1}, 'b': {}}) is None
    two = {'a': {'b': 1}, 'b': {'a': 2}, 'c': {'d': 3}, 'd': {'c': 4, 'a': 5}}
    assert cycles(two) == [['a', 'b', 'a'], ['c', 'd', 'c']]

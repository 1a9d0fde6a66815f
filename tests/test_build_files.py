"""Checks the Bazel files against the sources, without Bazel.

Each BUILD file is executed as Python with stand-ins for the rules, which
record the targets. The checks: every module of cl_zoo/, flags/ and trainers/
is in the srcs of exactly one py_library or py_binary; every tests/test_*.py
has its py_test; every target's deps name the targets of the modules it
imports (read with `ast`) and the pip packages of its third-party imports;
labels resolve, the graph has no cycle, and MODULE.bazel's pip hub pins the
installed versions of the direct dependencies.
"""

import ast
import dataclasses
import fnmatch
import importlib.metadata
import os
import re
import sys

import pytest

# Not os.path.realpath: under Bazel the runfiles tree is the repository.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_ROOTS = ("cl_zoo", "flags", "trainers")
BUILD_NAMES = ("BUILD.bazel", "BUILD")
PY_RULES = ("py_library", "py_binary", "py_test")
RULES_PYTHON_DEFS = "@rules_python//python:defs.bzl"
HUB = "pypi"
# Top-level import name -> the pip hub's package name.
THIRD_PARTY = {
    "absl": "absl_py",
    "keras": "keras",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "pytest": "pytest",
    "tensorboard": "tensorboard",
    "tensorflow": "tensorflow",
    "tensorflow_datasets": "tensorflow_datasets",
}
# Packages of pyproject's optional extras, imported only where they are
# asked for (PyTorch, by trainers/bench_vs_torch.py's comparison): no Bazel
# target depends on them.
OPTIONAL_EXTRAS = {"torch": "bench"}
DIRECT_REQUIREMENTS = (
    "tensorflow", "keras", "tensorflow-datasets", "tensorboard", "absl-py",
    "numpy", "matplotlib", "pytest",
)


@dataclasses.dataclass
class Target:
    kind: str
    package: str
    name: str
    attrs: dict

    @property
    def label(self):
        return f"//{self.package}:{self.name}"

    def files(self, attr):
        """Repository paths of the files `attr` names in this package."""
        return [
            os.path.join(self.package, f) if self.package else f
            for f in self.attrs.get(attr, ())
            if not f.startswith((":", "//", "@"))
        ]

    def labels(self, attr):
        return [canonical_label(x, self.package)
                for x in self.attrs.get(attr, ())
                if x.startswith((":", "//", "@"))]


def canonical_label(label, package):
    """`:x`, `//p`, `//p:x` -> `//p:x`; external labels as they are."""
    if label.startswith("@"):
        return label
    if label.startswith(":"):
        return f"//{package}{label}"
    if ":" not in label:
        return f"{label}:{label.rsplit('/', 1)[-1]}"
    return label


def _build_file(package):
    for name in BUILD_NAMES:
        path = os.path.join(REPO_ROOT, package, name)
        if os.path.isfile(path):
            return path
    return None


def _packages():
    out = []
    for dirpath, dirnames, _ in os.walk(REPO_ROOT):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith((".", "_", "bazel-")) and d != "external"
        )
        package = os.path.relpath(dirpath, REPO_ROOT)
        package = "" if package == "." else package
        if _build_file(package):
            out.append(package)
    return out


def _read_build_file(package):
    """The targets and exported files of one BUILD file."""
    path = _build_file(package)
    targets, exports = [], []
    namespace = {"__builtins__": {}}

    def rule(kind):
        def record(name, **attrs):
            targets.append(Target(kind, package, name, attrs))

        return record

    def load(bzl, *symbols):
        for symbol in symbols:
            if bzl != RULES_PYTHON_DEFS or symbol not in PY_RULES:
                raise AssertionError(f"{path}: unexpected load of {symbol}")
            namespace[symbol] = rule(symbol)

    def glob(include, exclude=()):
        directory = os.path.join(REPO_ROOT, package)
        return sorted(
            f for f in os.listdir(directory)
            if any(fnmatch.fnmatch(f, p) for p in include)
            and not any(fnmatch.fnmatch(f, p) for p in exclude)
        )

    namespace.update(
        load=load,
        glob=glob,
        package=lambda **kwargs: None,
        exports_files=lambda files, **kwargs: exports.extend(files),
        filegroup=rule("filegroup"),
        alias=rule("alias"),
    )
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
    return targets, exports


@pytest.fixture(scope="module")
def build():
    targets, files = {}, set()
    for package in _packages():
        package_targets, exports = _read_build_file(package)
        for target in package_targets:
            assert target.label not in targets, f"{target.label} twice"
            targets[target.label] = target
        files.update(
            os.path.join(package, f) if package else f for f in exports
        )
    return targets, files


def _py_targets(targets, kinds=PY_RULES):
    return [t for t in targets.values() if t.kind in kinds]


def _module_name(path):
    parts = path[:-len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _library_modules():
    out = []
    for root in LIBRARY_ROOTS:
        for dirpath, dirnames, filenames in os.walk(
            os.path.join(REPO_ROOT, root)
        ):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            out += [
                os.path.relpath(os.path.join(dirpath, f), REPO_ROOT)
                for f in filenames if f.endswith(".py")
            ]
    return sorted(out)


def _imports(path):
    """(module, line) of every import in the file, relative ones resolved."""
    with open(os.path.join(REPO_ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    package = _module_name(path)
    if not path.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [([alias.name], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from a import b`: b is module a.b when there is one.
            out += [
                ([f"{base}.{alias.name}", base], node.lineno)
                for alias in node.names
            ]
    return out


def test_build_files_define_targets(build):
    targets, _ = build
    assert len(_py_targets(targets, ("py_library",))) >= 20
    assert "//trainers:train" in targets
    assert targets["//trainers:train"].kind == "py_binary"


def test_every_library_module_is_in_exactly_one_target(build):
    targets, _ = build
    owners = {}
    for target in _py_targets(targets, ("py_library", "py_binary")):
        for path in target.files("srcs"):
            owners.setdefault(path, []).append(target.label)
    problems = []
    for path in _library_modules():
        labels = owners.get(path, [])
        if len(labels) != 1:
            problems.append(f"{path}: in the srcs of {labels or 'no target'}")
    assert not problems, (
        "Give every module its own py_library (see STYLE.md):\n"
        + "\n".join(problems)
    )


def test_every_test_file_has_a_py_test(build):
    targets, _ = build
    tests_dir = os.path.join(REPO_ROOT, "tests")
    problems = []
    for filename in sorted(os.listdir(tests_dir)):
        if not fnmatch.fnmatch(filename, "test_*.py"):
            continue
        name = filename[:-len(".py")]
        target = targets.get(f"//tests:{name}")
        if target is None or target.kind != "py_test":
            problems.append(f"tests/{filename}: no py_test //tests:{name}")
            continue
        srcs = target.attrs.get("srcs", ())
        if filename not in srcs or "pytest_main.py" not in srcs:
            problems.append(f"{target.label}: srcs lack {filename} or "
                            "pytest_main.py")
        if target.attrs.get("main") != "pytest_main.py":
            problems.append(f"{target.label}: main is not pytest_main.py")
        if f"$(rootpath {filename})" not in target.attrs.get("args", ()):
            problems.append(f"{target.label}: args lack $(rootpath "
                            f"{filename})")
    assert not problems, "\n".join(problems)


def test_deps_cover_the_imports(build):
    targets, _ = build
    py_targets = _py_targets(targets)
    module_owner = {}
    for target in py_targets:
        for path in target.files("srcs"):
            module_owner.setdefault(_module_name(path), target.label)
    first_party = {m.split(".")[0] for m in module_owner}
    problems = []
    for target in py_targets:
        deps = set(target.labels("deps"))
        for path in target.files("srcs"):
            for candidates, line in _imports(path):
                where = f"{path}:{line} ({target.label})"
                top = candidates[-1].split(".")[0]
                if top in first_party:
                    owner = next(
                        (module_owner[m] for m in candidates
                         if m in module_owner), None
                    )
                    if owner is None:
                        # `import a.b.c`: the deepest module that exists.
                        name = candidates[0]
                        while name and name not in module_owner:
                            name = name.rpartition(".")[0]
                        owner = module_owner.get(name)
                    if owner is None:
                        problems.append(f"{where}: no target has "
                                        f"{candidates[0]}")
                    elif owner != target.label and owner not in deps:
                        problems.append(f"{where}: imports "
                                        f"{candidates[-1]}; add {owner}")
                elif top in THIRD_PARTY:
                    label = f"@{HUB}//{THIRD_PARTY[top]}"
                    if label not in deps:
                        problems.append(f"{where}: imports {top}; add "
                                        f"{label}")
                elif top in OPTIONAL_EXTRAS:
                    continue
                elif top not in sys.stdlib_module_names and top:
                    problems.append(f"{where}: {top} is neither ours, nor "
                                    "the standard library's, nor in "
                                    "THIRD_PARTY")
    assert not problems, "\n".join(problems)


def test_labels_resolve(build):
    targets, files = build
    with open(os.path.join(REPO_ROOT, "requirements_lock.txt")) as f:
        pinned = {
            re.sub(r"[-_.]+", "_", line.split("==")[0].strip().lower())
            for line in f if "==" in line and not line.startswith("#")
        }
    problems = []
    for target in targets.values():
        for attr in ("deps", "data", "srcs", "actual"):
            value = target.attrs.get(attr, ())
            labels = [value] if isinstance(value, str) else value
            for label in labels:
                if not label.startswith((":", "//", "@")):
                    path = os.path.join(target.package, label)
                    if not os.path.exists(os.path.join(REPO_ROOT, path)):
                        problems.append(f"{target.label}: no file {path}")
                    continue
                label = canonical_label(label, target.package)
                if label.startswith(f"@{HUB}//"):
                    if label[len(f"@{HUB}//"):] not in pinned:
                        problems.append(f"{target.label}: {label} is not "
                                        "in requirements_lock.txt")
                elif label.startswith("@"):
                    problems.append(f"{target.label}: unknown repo {label}")
                elif label not in targets:
                    package, name = label[2:].split(":")
                    path = os.path.join(package, name) if package else name
                    if path not in files and not (
                        package == target.package
                        and os.path.exists(os.path.join(REPO_ROOT, path))
                    ):
                        problems.append(f"{target.label}: no {label}")
    assert not problems, "\n".join(problems)


def test_no_dependency_cycles(build):
    targets, _ = build
    graph = {
        label: [d for d in t.labels("deps") if d in targets]
        for label, t in targets.items()
    }
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        if state.get(node) == "open":
            raise AssertionError(
                "cycle: " + " -> ".join(path[path.index(node):] + [node])
            )
        state[node] = "open"
        for dep in graph[node]:
            visit(dep, path + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def test_module_bazel_pins_the_installed_dependencies():
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getattr__(self, attr):
            return lambda *args, **kwargs: calls.append(
                (f"{self.name}.{attr}", args, kwargs)
            )

    def record(name):
        return lambda *args, **kwargs: calls.append((name, args, kwargs))

    namespace = {
        "__builtins__": {},
        "module": record("module"),
        "bazel_dep": record("bazel_dep"),
        "use_repo": record("use_repo"),
        "use_extension": lambda bzl, name: Recorder(name),
    }
    path = os.path.join(REPO_ROOT, "MODULE.bazel")
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
    deps = {kw["name"] for name, _, kw in calls if name == "bazel_dep"}
    assert "rules_python" in deps
    (parse,) = [kw for name, _, kw in calls if name == "pip.parse"]
    assert parse["hub_name"] == HUB
    assert parse["requirements_lock"] == "//:requirements_lock.txt"
    assert any(name == "use_repo" and HUB in args[1:]
               for name, args, _ in calls)
    assert any(name == "python.toolchain" for name, _, _ in calls)

    with open(os.path.join(REPO_ROOT, "requirements_lock.txt")) as f:
        pins = dict(
            line.strip().split("==", 1) for line in f
            if "==" in line and not line.startswith("#")
        )
    pins = {re.sub(r"[-_.]+", "-", k.lower()): v for k, v in pins.items()}
    for name in DIRECT_REQUIREMENTS:
        assert pins.get(name) == importlib.metadata.version(name), name


def test_ci_runs_the_readmes_test_command_with_the_lock():
    """`.ci/run` calls the README's test command, which installs with the
    lock file as constraints (a new release of a dependency cannot break
    CI), and lints."""
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
        ci = f.read()
    (command,) = re.findall(r"^(pip install .*python -m pytest)$", readme,
                            re.MULTILINE)
    assert "-c requirements_lock.txt" in command
    assert command in ci.splitlines()
    assert "ruff check ." in ci.splitlines()
    # The tests kept out of the default suite still run in CI.
    assert 'python -m pytest -m "heavy and not slow"' in ci.splitlines()
    with open(os.path.join(REPO_ROOT, "requirements_lock.txt")) as f:
        assert re.search(r"^ruff==", f.read(), re.MULTILINE)


def test_readme_is_a_short_guide():
    """The README stays a user's guide (issue 17: under 200 lines); method
    narratives live in docs/methods/, and every link it makes resolves."""
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    assert len(readme.splitlines()) < 200
    for target in re.findall(r"\]\(((?:docs)/[^)#]+)", readme):
        assert os.path.exists(os.path.join(REPO_ROOT, target)), target


def test_results_open_with_the_summary_table():
    with open(os.path.join(REPO_ROOT, "docs", "RESULTS.md")) as f:
        text = f.read()
    start = text.index("\n## ")
    first = text[start:text.index("\n## ", start + 1)].split("\n")
    assert first[1] == "## Summary"
    table = [line for line in first if line.startswith("| `")]
    assert table and all(" --model_dir=DIR` |" in row for row in table)


def test_optional_extras_are_declared():
    """Every package of OPTIONAL_EXTRAS is in its pyproject extra."""
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    for package, extra in OPTIONAL_EXTRAS.items():
        line = re.search(rf"^{extra} = \[(.*)\]$", pyproject, re.M)
        assert line, f"no optional-dependencies entry {extra!r}"
        names = [re.split(r"[<>=!~ \[]", r.strip(' "'), maxsplit=1)[0]
                 for r in line.group(1).split(",")]
        assert package in names, (package, extra)

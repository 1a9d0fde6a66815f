"""Flags every cl_zoo trainer shares (the contract's command line).

Derived from the declarations (`cl_zoo.settings.Setting`): the run's generic
settings (`cl_zoo.config.RUN_SETTINGS`) and those of every method and
consolidation, each declared in its owner's file. Flags left unset take the
defaults of the (method, benchmark) pair; a flag that the chosen method and
its consolidation do not read is refused by `resolve_config`. Library code
never reads FLAGS; the trainer turns them into a frozen `RunConfig`.
"""

from __future__ import annotations

import functools

from absl import flags

from cl_zoo.config import RUN_SETTING_NAMES, ConfigError, all_settings
from cl_zoo.settings import format_value


def config_flag_names():
    """Every setting's flag: the run's first, then the owners', sorted."""
    names = list(RUN_SETTING_NAMES)
    names += sorted(set(all_settings()) - set(names))
    return tuple(names)


def _join(words):
    words = list(words)
    return words[0] if len(words) == 1 else (
        ", ".join(words[:-1]) + " and " + words[-1])


@functools.cache
def resolved_defaults():
    """`{(method, benchmark): RunConfig}` with nothing set by the user."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.config import resolve_config
    from cl_zoo.methods import get_method, method_names

    return {
        (m, b): resolve_config(get_method(m), b, {})
        for m in method_names() for b in BENCHMARKS
    }


def method_defaults_help(key):
    """`"Default D (V1 for M1 and M2 on B1, M3; V2 for ...)."` for a
    flag's help: the declared default, then the values that the methods
    resolve per benchmark where they differ, read from the resolver itself
    so that the help cannot drift from the code. Methods whose run does not
    read `key` are left out."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.methods import method_names

    base = all_settings()[key].default
    table = resolved_defaults()
    found = {}  # value -> method -> benchmarks where the method uses it
    for name in method_names():
        for benchmark in BENCHMARKS:
            config = table[(name, benchmark)]
            if key in config and config[key] != base:
                found.setdefault(config[key], {}).setdefault(
                    name, []).append(benchmark)
    parts = []
    for value, methods in sorted(found.items(), key=lambda kv: str(kv[0])):
        groups = {}  # the same benchmarks -> the methods
        for name, where in methods.items():
            groups.setdefault(tuple(where), []).append(name)
        phrases = []
        for where, names in groups.items():
            rest = [b for b in BENCHMARKS if b not in where]
            if not rest:
                phrases.append(_join(names))
            elif len(rest) < len(where):
                phrases.append(f"{_join(names)} except on {_join(rest)}")
            else:
                phrases.append(f"{_join(names)} on {_join(where)}")
        parts.append(f"{format_value(value)} for {', '.join(phrases)}")
    shown = "none" if base is None else format_value(base)
    text = f"Default {shown}"
    return text + (" (" + "; ".join(parts) + ")." if parts else ".")


def _owners_help(key):
    from cl_zoo.config import owners_phrase

    if key in RUN_SETTING_NAMES:
        return ""
    return f" [{owners_phrase(key)}]"


_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string, bool: flags.DEFINE_boolean}


def define_run_flags():
    """Defines the flags of `python -m trainers.train`."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.consolidation.registry import consolidation_names
    from cl_zoo.methods import method_names

    flags.DEFINE_string(
        "method", None,
        f"Continual-learning method (required), one of: "
        f"{', '.join(method_names())}. With --help, lists that method's "
        "settings and the defaults it will use.",
    )
    flags.DEFINE_string(
        "benchmark", None,
        f"Task sequence (required), one of: {', '.join(BENCHMARKS)}.",
    )
    settings = all_settings()
    for name in config_flag_names():
        setting = settings[name]
        text = setting.help
        if name == "consolidation":
            text += f" One of: {', '.join(consolidation_names())}."
        elif setting.choices:
            text += f" One of: {', '.join(setting.choices)}."
        if name == "model_dir":
            text = "(required) " + text
        elif name not in ("fast", "overwrite", "data_dir"):
            text += " " + method_defaults_help(name)
        text += _owners_help(name)
        if setting.is_list:
            flags.DEFINE_list(name, None, text)
        else:
            _DEFINE[setting.kind](name, None, text)


def config_overrides(flag_values):
    """The settings the user gave on the command line (`None`: not given)."""
    settings = all_settings()
    out = {}
    for name in config_flag_names():
        value = flag_values[name].value
        if value is not None and settings[name].is_list:
            value = settings[name].parse_items(value)
        out[name] = value
    return out


def method_help(method, benchmark=None):
    """The settings a run of `method` reads, with the values it would use
    (on `benchmark`, or the first benchmark if None): the text of
    `python -m trainers.train --method=M [--benchmark=B] --help`."""
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.config import applicable_settings, resolve_config
    from cl_zoo.methods import get_method

    cls = get_method(method)
    shown = benchmark or BENCHMARKS[0]
    if shown not in BENCHMARKS:
        raise ConfigError(
            f"Unknown benchmark {shown!r}; expected one of: "
            f"{', '.join(BENCHMARKS)}."
        )
    config = resolve_config(cls, shown, {})
    settings = applicable_settings(cls, config.consolidation, shown)
    doc = (cls.__doc__ or "").strip().splitlines()
    lines = [
        f"--method={method}: {doc[0] if doc else ''}",
        f"Defaults on --benchmark={shown}"
        + ("" if benchmark else " (give --benchmark for another)")
        + "; set any of these flags to change one.",
    ]

    def block(title, names):
        if not names:
            return
        lines.append("")
        lines.append(title)
        for name in names:
            value = config[name]
            lines.append(
                f"  --{name}={'' if value is None else format_value(value)}"
            )
            lines.append(f"      {settings[name].help}")

    own = [s.name for s in cls.settings()]
    block(f"Settings of {method}:", own)
    if config.consolidation != "none":
        block(
            f"Settings of --consolidation={config.consolidation}:",
            [n for n in settings if n not in RUN_SETTING_NAMES
             and n not in own],
        )
    from cl_zoo.benchmarks import benchmark_settings

    block(f"Settings of --benchmark={shown}:",
          [s.name for s in benchmark_settings(shown)])
    block("Run settings:", [n for n in RUN_SETTING_NAMES
                            if n != "model_dir" and n in config])
    lines.append("")
    lines.append("Required: --method, --benchmark, --model_dir. "
                 "All flags of every method: --helpfull.")
    return "\n".join(lines)


def _first_sentence(text):
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def short_help(program_doc, extra=()):
    """`--help` of the trainer: the required flags, then the run's settings
    in groups, one line each; method settings and the full list are one
    flag away.

    Args:
        program_doc: the program's docstring (its first line leads).
        extra: `(group, name, help)` of the program's own flags.
    """
    from cl_zoo.benchmarks import BENCHMARKS
    from cl_zoo.config import RUN_GROUPS
    from cl_zoo.consolidation.registry import consolidation_names
    from cl_zoo.methods import method_names

    settings = all_settings()
    lines = [
        program_doc.strip().splitlines()[0],
        "",
        "Required:",
        f"  --method=M          one of: {', '.join(method_names())}",
        f"  --benchmark=B       one of: {', '.join(BENCHMARKS)}",
        "  --model_dir=DIR     where the run writes; rerun the same command "
        "to resume",
    ]
    for group, names in RUN_GROUPS.items():
        lines += ["", f"{group}:"]
        for name in names:
            if name == "model_dir":
                continue
            text = _first_sentence(settings[name].help)
            if name == "consolidation":
                text += f" One of: {', '.join(consolidation_names())}."
            lines.append(f"  --{name:<18}{text}")
        if group == "Benchmark":
            from cl_zoo.benchmarks import all_benchmark_settings

            for name, setting in all_benchmark_settings().items():
                lines.append(f"  --{name:<18}"
                             f"{_first_sentence(setting.help)}")
        for where, name, text in extra:
            if where == group:
                lines.append(f"  --{name:<18}{_first_sentence(text)}")
        if group == "Method":
            lines.append(
                "  A method's own settings, with the values it will use: "
                "--method=M [--benchmark=B] --help")
    lines += ["", "Every flag of every method, with its help: --helpfull."]
    return "\n".join(lines)

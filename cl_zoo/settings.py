"""Declared settings: a hyperparameter's name, type, default, range and help.

Whoever reads a setting declares it, in its own file: a method (BPN's
`bias_hidden`), a consolidation (EWC's `ewc_lambda`), a gradient rule (the
sign step `epsilon`) or the run itself (`epochs`, `lr`...). Everything else
is derived from the declarations: the command-line flags and their help,
the validation of a resolved config, the parsing of `--sweep` and
`bench_step --set` words, and the keys of `config.json`.

    EPSILON = Setting("epsilon", float, 0.01, "Step of the sign updates.",
                      above=0)

Two owners that read one setting share its declaration object (EWC, SPP and
MAS all take `FISHER_SAMPLES`); two different declarations of one name are
an error when the registries meet (`merge`).
"""

from __future__ import annotations

import dataclasses
import math

# Item types of list settings (`hidden_units=200,100`).
_BOOLEANS = {"1": True, "true": True, "yes": True,
             "0": False, "false": False, "no": False}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says why."""


@dataclasses.dataclass(frozen=True, eq=False)
class Setting:
    """One hyperparameter.

    Args:
        name: the flag and config key, e.g. `"ewc_lambda"`.
        kind: `int`, `float`, `str`, `bool`, or a list of numbers:
            `(int,)` / `(float,)` (a comma-separated flag).
        default: the value when nobody sets it (owners may give their own
            per benchmark in `default_config`). `None` for an optional one.
        help: one line for `--help`.
        choices: the allowed values, for a `str` setting.
        minimum / maximum: inclusive bounds of a number (of each item).
        above / below: exclusive bounds.
        expected: the phrase of the error message, when the bounds do not
            say it well (e.g. "a rate in [0, 1)").
        min_items: list settings: the fewest items.
    """

    name: str
    kind: object
    default: object
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    expected: str = ""
    min_items: int = 1

    # ------------------------------------------------------------------
    @property
    def is_list(self):
        return isinstance(self.kind, tuple)

    @property
    def item_kind(self):
        return self.kind[0] if self.is_list else self.kind

    @property
    def type_name(self):
        name = self.item_kind.__name__
        return f"list of {name}" if self.is_list else name

    def expectation(self):
        """What a valid value looks like, for error messages."""
        if self.expected:
            return self.expected
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        kind = self.item_kind
        if kind is bool:
            return "true or false"
        if kind is str:
            return "a string"
        noun = "an integer" if kind is int else "a number"
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {self.minimum:g}")
        if self.above is not None:
            bounds.append(f"> {self.above:g}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum:g}")
        if self.below is not None:
            bounds.append(f"< {self.below:g}")
        if self.minimum == 1 and kind is int and not self.maximum:
            phrase = "a positive integer"
        elif self.minimum == 0 and not (self.maximum or self.below):
            phrase = f"a non-negative {noun.split()[-1]}"
        else:
            phrase = noun + (" " + " and ".join(bounds) if bounds else "")
        if self.is_list:
            return f"a comma-separated list of {phrase.split(' ', 1)[1]}s" \
                if phrase.startswith(("a ", "an ")) else phrase
        return phrase

    # ------------------------------------------------------------------
    def _item_ok(self, value):
        kind = self.item_kind
        if kind is bool:
            return isinstance(value, bool)
        if kind is str:
            return isinstance(value, str) and (
                not self.choices or value in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def normalize(self, value):
        """`value` in the setting's canonical type (a tuple for lists)."""
        if value is None:
            return None
        if self.is_list:
            if isinstance(value, int | float | str):
                value = (value,)
            return tuple(self.item_kind(v) for v in value)
        if self.kind is float and isinstance(value, int) \
                and not isinstance(value, bool):
            return float(value)
        return value

    def check(self, value):
        """Raises ConfigError unless `value` (normalized) is allowed."""
        if value is None and self.default is None:
            return
        if self.is_list:
            ok = (isinstance(value, tuple) and len(value) >= self.min_items
                  and all(self._item_ok(v) for v in value))
            shown = ",".join(map(_fmt, value)) if isinstance(
                value, tuple) else value
        else:
            ok = self._item_ok(value)
            shown = str(value).lower() if isinstance(value, bool) else value
        if not ok:
            raise ConfigError(
                f"--{self.name}={shown} is not allowed: expected "
                f"{self.expectation()}."
            )

    def parse(self, text):
        """One command-line word as a value (list items joined by ':', as
        the callers split their words at commas); ValueError if it does not
        read as the setting's type."""
        if self.is_list:
            return tuple(self._parse_item(t) for t in text.split(":"))
        return self._parse_item(text)

    def _parse_item(self, text):
        kind = self.item_kind
        if kind is bool:
            if text.lower() not in _BOOLEANS:
                raise ValueError(f"{text!r} is not a boolean")
            return _BOOLEANS[text.lower()]
        return kind(text)

    def parse_items(self, items):
        """The words of a list flag (`--hidden_units=200,100`) as a value;
        ConfigError when an item does not read as a number."""
        try:
            return tuple(self._parse_item(i) for i in items)
        except ValueError:
            raise ConfigError(
                f"--{self.name}={','.join(items)} is not allowed: expected "
                f"{self.expectation()}."
            ) from None


def _fmt(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def format_value(value):
    """A value as a person types it on the command line."""
    if isinstance(value, tuple | list):
        return ",".join(_fmt(v) for v in value)
    return _fmt(value)


def merge(groups):
    """`{name: Setting}` of several owners' declarations.

    Args:
        groups: iterables of `Setting`s.

    Raises:
        ValueError: two different declarations share a name.
    """
    out = {}
    for group in groups:
        for setting in group:
            known = out.setdefault(setting.name, setting)
            if known is not setting:
                raise ValueError(
                    f"Setting {setting.name!r} is declared twice, "
                    "differently; owners that share a setting must share "
                    "its declaration."
                )
    return out

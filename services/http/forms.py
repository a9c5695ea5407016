"""Form fields built from the options table (``swapstream.services.options``): a swap's options, as in
``swapstream swap``, with the same types, choices, bounds and defaults."""
from __future__ import annotations

import inspect
from typing import Annotated, Literal

from fastapi import Form

from swapstream.services.options import TABLES, Option


def form_field(option: Option):
    """The option as an annotated FastAPI form field (its choices a Literal, its bounds ge/gt/le/lt)."""
    kind = Literal[option.choices] if option.choices else option.kind
    bounds = {}
    if option.low is not None:
        bounds["gt" if option.low_open else "ge"] = option.low
    if option.high is not None:
        bounds["lt" if option.high_open else "le"] = option.high
    describe = option.describe()
    help_text = f"{option.help}, in {describe}" if describe else option.help
    return Annotated[kind, Form(description=help_text, **bounds)]


def options_form(table: str, names: tuple[str, ...] | None = None):
    """A FastAPI dependency: the table's form options (or only ``names``) as form fields -> a dict of them."""
    options = [o for o in TABLES[table].values() if o.form and (names is None or o.name in names)]

    def dependency(**values) -> dict:
        return values

    dependency.__signature__ = inspect.Signature([
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=form_field(o))
        for o in options])
    dependency.__name__ = f"{table}_form"
    return dependency


swap_form = options_form("swap")
score_threshold_form = options_form("swap", ("score_threshold",))

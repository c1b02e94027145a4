"""The mapped webhook's template language: paths only, missing paths empty and reported, and
nothing else accepted."""

from __future__ import annotations

import pytest

from relay.errors import ConfigError
from relay.template import VALUE_MAX, parse


def test_paths_render_values_of_every_json_kind() -> None:
    template = parse("{{ a }}|{{b.c}}|{{ n }}|{{ t }}|{{ o }}|{{ l.1 }}|{{ z }}")
    text, missing = template.render({"a": "x", "b": {"c": "y"}, "n": 3.5, "t": True, "o": {"k": [1]},
                                     "l": ["p", "q"], "z": None})
    assert text == 'x|y|3.5|true|{"k":[1]}|q|'
    assert missing == []


def test_missing_paths_render_empty_and_are_reported() -> None:
    text, missing = parse("title: {{ event.data.title }}; n={{ event.items.7 }}").render({"event": {"items": [1]}})
    assert text == "title: ; n="
    assert missing == ["event.data.title", "event.items.7"]


def test_a_path_never_reaches_past_json() -> None:
    # Dict keys only: no attributes, no methods, no dunders of the Python objects behind them.
    text, missing = parse("{{ s.__class__ }}{{ s.upper }}{{ l.__len__ }}{{ d.keys }}").render(
        {"s": "str", "l": [], "d": {}})
    assert text == "" and len(missing) == 4


def test_long_values_are_cut() -> None:
    text, _ = parse("{{ a }}").render({"a": "x" * (VALUE_MAX * 2)})
    assert len(text) == VALUE_MAX and text.endswith("…")


@pytest.mark.parametrize("source", [
    "{{ a + b }}", "{{ a | upper }}", "{{ a() }}", "{{ a[0] }}", "{{ }}", "{{ a", "a }}",
    "{{ 'lit' }}", "{{ a.b c }}", "", "   ", "{{{{ a }}}}", "{{ a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q }}"])
def test_anything_but_a_path_is_refused_at_load(source: str) -> None:
    with pytest.raises(ConfigError):
        parse(source, "[routes.x.mapped] text")


def test_literal_text_stays_as_written() -> None:
    assert parse("no placeholders: {braces} } { {% if a %}").render({}) == ("no placeholders: {braces} } { {% if a %}", [])

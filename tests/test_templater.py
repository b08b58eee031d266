"""${A/B/C} templates, Random helpers and sanitising (elemental_operator.registration.templater)."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elemental_operator.registration.templater import (
    MAX_NAME_LEN,
    TemplateError,
    Templater,
    ValueNotFound,
    is_random_template,
    sanitize_label_value,
    sanitize_machine_name,
)


def tmpl() -> Templater:
    t = Templater()
    t.fill(
        {
            "System Information": {"Serial Number": "SN 42", "UUID": "abc"},
            "CPU": {"TotalCores": "8", "List": ["x"]},
        }
    )
    t.fill({"Runtime": {"Hostname": "edge-1"}})
    return t


def test_lookup_and_literals() -> None:
    t = tmpl()
    assert t.render("node-${System Information/Serial Number}-${CPU/TotalCores}") == "node-SN 42-8"
    assert t.render("plain") == "plain" and t.render("") == ""
    assert t.render("open ${Runtime/Hostname") == "open ${Runtime/Hostname"  # unterminated: literal
    assert t.render("${Runtime/Hostname}}") == "edge-1}"


@pytest.mark.parametrize(
    "template",
    ["${Nope}", "${CPU}", "${CPU/List}", "${CPU/TotalCores/x}", "${}", "${Random/Other}", "${Random}"],
)
def test_value_not_found(template: str) -> None:
    with pytest.raises(ValueNotFound):
        tmpl().render(template)


def test_fill_replaces_top_level_keys() -> None:
    t = tmpl()
    t.fill({"Runtime": {"Other": "x"}})
    with pytest.raises(ValueNotFound):
        t.render("${Runtime/Hostname}")


def test_random_helpers() -> None:
    t = Templater()
    uuid.UUID(t.render("${Random/UUID}"))
    assert re.fullmatch(r"[0-9a-f]{7}", t.render("${Random/Hex/7}"))
    assert len(t.render("${Random/Hex/32}")) == 32
    values = {int(t.render("${Random/Int/3}")) for _ in range(200)}
    assert values == {0, 1, 2}
    assert t.render("${Random/UUID}") != t.render("${Random/UUID}")
    for bad in (
        "${Random/Hex/0}",
        "${Random/Hex/33}",
        "${Random/Hex/x}",
        "${Random/Int/0}",
        "${Random/Int/-3}",
        "${Random/UUID/1}",
        "${Random/Hex}",
    ):
        with pytest.raises(TemplateError):
            t.render(bad)
    assert is_random_template("a-${Random/Hex/4}") and not is_random_template("${System/Random}")


@given(st.text(max_size=200))
def test_label_sanitising_properties(value: str) -> None:
    out = sanitize_label_value(value)
    assert len(out) <= MAX_NAME_LEN
    assert re.fullmatch(r"([0-9a-zA-Z]([0-9a-zA-Z._-]*[0-9a-zA-Z])?)?", out), out
    assert "--" not in out
    assert sanitize_label_value(out) == out  # idempotent


@given(st.text(max_size=200))
def test_name_sanitising_properties(value: str) -> None:
    out = sanitize_machine_name(value)
    assert len(out) <= MAX_NAME_LEN
    # A DNS-1123 subdomain-ish hostname: lower-case alphanumerics, '-' and '.', alphanumeric at both ends.
    assert re.fullmatch(r"([0-9a-z]([0-9a-z.-]*[0-9a-z])?)?", out), out
    assert "_" not in out and "--" not in out


@given(
    st.dictionaries(
        st.text(st.characters(blacklist_characters="/{}$"), min_size=1, max_size=10),
        st.text(max_size=20),
        max_size=5,
    )
)
def test_any_string_leaf_renders(data: dict[str, str]) -> None:
    t = Templater()
    t.fill({"Top": data})
    for key, value in data.items():
        assert t.render("<${Top/" + key + "}>") == f"<{value}>"


def test_sanitising_examples() -> None:
    assert sanitize_machine_name("Intel(R) Xeon_Gold 6130 @ 2.10GHz") == "intel-r-xeon-gold-6130-2.10ghz"
    assert sanitize_label_value("Intel(R) Xeon_Gold 6130 @ 2.10GHz") == "Intel-R-Xeon_Gold-6130-2.10GHz"
    assert sanitize_machine_name("--a--") == "a" and sanitize_machine_name("???") == ""
    long = "a" * 57 + "-b"
    assert sanitize_machine_name(long) == "a" * 57  # truncation leaves no trailing dash

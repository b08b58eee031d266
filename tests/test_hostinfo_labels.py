"""The local labels file (``--local-labels-file``) read as upstream's register client reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from elemental_common.errors import Die
from elemental_register.config import load_labels_file


def test_values_are_the_text_written(tmp_path: Path) -> None:
    # cmd/register/main.go decodes the file with yaml.v3 into map[string]string: a scalar is its
    # text. YAML 1.1 (PyYAML's safe_load) made `yes` True, hence the label value 'True'.
    f = tmp_path / "labels.yaml"
    f.write_text(
        "fromFile: yes\nrack: off\nslot: 0x10\nweight: 1.50\nsince: 2024-01-01\nquoted: 'no'\n"
        "plain: true\nnothing:\ntilde: ~\non: 7\n? !!int 012\n: !!bool y\n"
    )
    assert load_labels_file(str(f)) == {
        "fromFile": "yes",
        "rack": "off",
        "slot": "0x10",
        "weight": "1.50",
        "since": "2024-01-01",
        "quoted": "no",
        "plain": "true",
        "nothing": "",
        "tilde": "",
        "on": "7",
        "012": "y",
    }


def test_nested_form_and_merge_keys(tmp_path: Path) -> None:
    f = tmp_path / "labels.yaml"
    f.write_text("base: &b {zone: yes}\nlabels:\n  <<: *b\n  site: 0123\n")
    assert load_labels_file(str(f)) == {"zone": "yes", "site": "0123"}


def test_a_label_that_is_not_a_string_is_an_error(tmp_path: Path) -> None:
    # upstream refuses such a file ("cannot unmarshal !!seq into string"); we name the label
    f = tmp_path / "labels.yaml"
    f.write_text("zone: a\nracks: [1, 2]\n")
    with pytest.raises(Die, match="label 'racks' is not a string"):
        load_labels_file(str(f))

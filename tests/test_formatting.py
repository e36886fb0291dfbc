"""fusion_core.formatting.format_value: how numbers, dicts and lists read in the terminal and the report."""

from __future__ import annotations

import pytest

from fusion_core.formatting import format_value


def test_none_reads_as_the_none_text():
    assert format_value(None) == ""
    assert format_value(None, none="—") == "—"


@pytest.mark.parametrize("value, expected", [(0.123456, "0.1235"), (1234567.0, "1.235e+06"), (2.0, "2"),
                                             (0.5, "0.5")])
def test_floats_default_to_four_significant_digits(value, expected):
    assert format_value(value) == expected


def test_floats_with_a_custom_format():
    assert format_value(0.123456, float_format=".4f") == "0.1235"
    assert format_value(2.0, float_format=".2f") == "2.00"


def test_other_scalars_are_str():
    assert format_value(3) == "3"
    assert format_value("text") == "text"
    assert format_value(True) == "True"


def test_dict_with_and_without_brackets():
    value = {"a": 2, "b": 0.333333, "c": None}
    assert format_value(value) == "{a: 2, b: 0.3333, c: }"
    assert format_value(value, brackets=False, none="—") == "a: 2, b: 0.3333, c: —"
    assert format_value({}) == "{}"
    assert format_value({}, brackets=False, none="—") == "—"


def test_nested_values_use_the_same_options():
    value = {"x": {"y": 0.123456}, "z": [1.0, 2.5]}
    assert format_value(value) == "{x: {y: 0.1235}, z: [1, 2.5]}"
    assert format_value(value, brackets=False, float_format=".1f") == "x: y: 0.1, z: 1.0, 2.5"


def test_lists_longer_than_max_items_read_as_a_count():
    assert format_value([1, 2, 3]) == "[1, 2, 3]"
    assert format_value([1, 2, 3, 4]) == "[4 items]"
    assert format_value([1, 2, 3, 4], brackets=False) == "4 items"
    assert format_value([], brackets=False, none="—") == "—"
    assert format_value([1, 2, 3, 4], max_items=4) == "[1, 2, 3, 4]"
    assert format_value([0.5, None], none="-") == "[0.5, -]"

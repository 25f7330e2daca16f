"""Size parsing (maxmessagesize, water marks)."""

import pytest

from chainmail.config.size import format_size, parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1024", 1024 * 1024),          # bare number = KiB by default
        ("10M", 10 * 1024 * 1024),
        ("10m", 10 * 1024 * 1024),
        ("10 M", 10 * 1024 * 1024),
        ("1G", 1024**3),
        ("512B", 512),
        ("512 b", 512),
        ("4k", 4096),
        ("UNLIMITED", 0),
        ("unlimited", 0),
        ("0", 0),
        ("0M", 0),
        (" 7K ", 7168),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_default_unit():
    assert parse_size("100", "B") == 100
    assert parse_size("2", "M") == 2 * 1024 * 1024
    assert parse_size("2K", "B") == 2048


@pytest.mark.parametrize("text", ["-1", "-5M", "abc", "10X", "1.5M", "", "  ", "10MB", "M"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    assert "expected a non-negative integer" in str(exc.value)


def test_negative_message_says_negative():
    with pytest.raises(ValueError, match="negative"):
        parse_size("-1")


def test_format_size():
    assert format_size(0) == "0"
    assert format_size(10 * 1024 * 1024) == "10M"
    assert format_size(1536) == "1536B"
    assert format_size(2048) == "2K"
    assert format_size(1024**3) == "1G"

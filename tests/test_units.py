import pytest

from fedhq_sim import units


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (units.parse_duration_s, "15 ms", 0.015),
        (units.parse_duration_s, "2 min", 120.0),
        (units.parse_duration_s, "250 us", 250e-6),
        (units.parse_bit_rate_bps, "100 Mbit/s", 1e8),
        (units.parse_bit_rate_bps, "1 MB/s", 8e6),
        (units.parse_byte_rate_Bps, "8 GB/s", 8e9),
        (units.parse_size_bytes, "4 GiB", 4 * 2**30),
        (units.parse_size_bytes, "512 kB", 512e3),
        (units.parse_throughput_ops, "48 GFLOP/s", 48e9),
        (units.parse_throughput_ops, "4 TOP/s", 4e12),
        (units.parse_fraction, "0.5 %", 0.005),
        (units.parse_fraction, 0.02, 0.02),
    ],
)
def test_parses_quantities_into_si_base_units(parse, text, expected):
    assert parse(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("parse", "text", "fragment"),
    [
        (units.parse_duration_s, "15", "like '15 ms'"),
        (units.parse_duration_s, 15, "with a unit"),
        (units.parse_duration_s, "15 parsecs", "unknown duration unit"),
        (units.parse_bit_rate_bps, "100 Mbps", "unknown bit rate unit"),
        (units.parse_bit_rate_bps, "fast", "like '100 Mbit/s'"),
        (units.parse_size_bytes, "4 KB", "unknown size unit"),
        (units.parse_fraction, "150 %", "in [0, 1)"),
        (units.parse_fraction, True, "fraction"),
    ],
)
def test_rejects_ambiguous_or_unitless_quantities(parse, text, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse(text)

"""GPU price table and the per-request cost share."""

from __future__ import annotations

import json

import pytest

from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.gateway.pricing import DEFAULT_GPU_PRICES, PriceTable


@pytest.mark.parametrize("reported, table_name", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    (None, "cpu"),
    ("Some Future Accelerator", "cpu"),
])
def test_reported_gpu_names_match_the_table(reported, table_name):
    assert PriceTable().hourly(reported) == DEFAULT_GPU_PRICES[table_name]


def test_cost_is_the_requests_share_of_gpu_hours():
    prices = PriceTable({"H100": 3.0})
    assert prices.request_cost(wall_s=36.0, gpu="NVIDIA H100 80GB HBM3", concurrent=4) == pytest.approx(0.0075)
    assert prices.request_cost(wall_s=3600.0, gpu=None, concurrent=0) == pytest.approx(prices.hourly("cpu"))


def test_overrides_come_from_a_json_file(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"H100": 1.25, "MI300X": 2.0}))
    prices = PriceTable.from_file(path)
    assert prices.hourly("NVIDIA H100") == 1.25
    assert prices.hourly("AMD Instinct MI300X") == 2.0
    assert prices.hourly("NVIDIA H200") == DEFAULT_GPU_PRICES["H200"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"H100": -1}', "price of 'H100' must be a non-negative number"),
    ('{"H100": "cheap"}', "price of 'H100' must be a non-negative number"),
])
def test_bad_price_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=message):
        PriceTable.from_file(path)


def test_missing_price_file(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        PriceTable.from_file(tmp_path / "nope.json")

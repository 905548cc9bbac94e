"""Prices per provider: the dated table, the median default, --provider, and what plans say they used.

Expected prices are worked out by hand from catalogs/prices.toml (instance price / GPUs per instance).
"""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from quantplan.cli import cli, main
from quantplan.solver.catalog import builtin_catalog
from quantplan.solver.errors import QuantplanError
from quantplan.solver.prices import median_price
from quantplan.solver.specs import PriceSpec

SMALL_SOLVE = ["solve", "--model", "llama-2-7b", "--max-gpus", "1", "--method", "fp16", "--concurrency", "1",
               "--no-alternatives", "--json"]


def test_every_price_row_is_dated_sourced_and_per_device():
    rows = builtin_catalog("prices")["price"]
    providers = {r.provider for r in rows}
    assert {"aws", "azure", "gcp", "lambda", "runpod", "coreweave"} <= providers
    for row in rows:
        assert row.as_of and row.url.startswith("https://") and len(row.source) > 20, row
        if row.instance_usd_per_hour is not None:
            assert row.usd_per_hour == pytest.approx(row.instance_usd_per_hour / row.gpus_per_instance, rel=5e-3)


def test_per_device_price_must_match_the_instance_price():
    with pytest.raises(ValueError, match="instance_usd_per_hour / gpus_per_instance"):
        PriceSpec(gpu="h100-sxm", provider="x", usd_per_hour=6.0, instance_usd_per_hour=55.04, gpus_per_instance=8,
                  as_of="2026", source="test row")


def test_default_is_the_median_across_providers(world):
    """h100-sxm: aws 6.88, azure 12.29, gcp 10.98, lambda 2.99, runpod 3.49, coreweave 6.155; sorted the
    middle two are 6.155 and 6.88 -> (6.155 + 6.88) / 2 = 6.5175. mi300x: 1.50, 1.85, 6.00 -> 1.85."""
    assert world.prices["h100-sxm"].usd_per_hour == pytest.approx(6.5175, abs=1e-9)
    assert world.prices["h100-sxm"].provider == "median of 6 providers"
    assert world.prices["mi300x"].usd_per_hour == pytest.approx(1.85, abs=1e-9)
    assert world.prices["a10g"].provider == "aws"  # one provider: its own price, unchanged
    assert world.prices["a10g"].usd_per_hour == 1.006


def test_median_of_two_is_their_mean():
    offers = [PriceSpec(gpu="x", provider=p, usd_per_hour=usd, as_of=d, source="test row")
              for p, usd, d in (("a", 0.86, "2026-05"), ("b", 2.01, "2025"))]
    median = median_price(offers)
    assert median.usd_per_hour == pytest.approx(1.435)
    assert median.as_of == "2025 to 2026-05"
    assert "a $0.86" in median.source and "b $2.01" in median.source


def test_provider_selection_changes_prices_as_the_table_says(world):
    lambda_ = world.with_prices({}, "lambda")
    assert lambda_["h100-sxm"].usd_per_hour == pytest.approx(23.92 / 8)  # gpu_8x_h100_sxm5
    assert "h200" not in lambda_ and "b200" not in lambda_  # Lambda lists neither
    assert world.with_prices({}, "coreweave")["h200"].usd_per_hour == pytest.approx(50.44 / 8)
    assert world.with_prices({}, "AWS")["b200"].usd_per_hour == pytest.approx(113.9328 / 8)  # case-insensitive
    assert world.with_prices({}, "aws")["m2-max"].provider == "owned"  # a device one owns keeps its price
    overridden = world.with_prices({"h100": 2.0}, "lambda")
    assert overridden["h100-sxm"].usd_per_hour == 2.0 and overridden["h100-sxm"].provider == "user"


def test_unknown_provider_is_one_line_and_exit_2(capsys):
    for argv in (SMALL_SOLVE + ["--provider", "nowhere"],
                 ["estimate", "--model", "llama-2-7b", "--method", "fp16", "--gpu", "h100-sxm", "--framework", "vllm",
                  "--provider", "nowhere"],
                 ["sweep", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--vary", "concurrency=1:2", "--points", "2",
                  "--engine", "serial", "--provider", "nowhere"],
                 ["list", "gpus", "--provider", "nowhere"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "unknown provider 'nowhere'; known: aws, azure" in err[0], err


def test_solve_with_a_provider_uses_its_price_and_says_so():
    result = CliRunner().invoke(cli, SMALL_SOLVE + ["--gpu", "h100-sxm", "--provider", "lambda"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["cost_per_hour"] == pytest.approx(2.99, rel=1e-12)
    assert plan["prices"]["basis"] == "provider lambda"
    assert plan["prices"]["devices"] == [{"gpu": "h100-sxm", "usd_per_hour": 2.99, "provider": "lambda",
                                          "as_of": "2026-05", "source": plan["prices"]["devices"][0]["source"]}]
    default = json.loads(CliRunner().invoke(cli, SMALL_SOLVE + ["--gpu", "h100-sxm"]).stdout)
    assert default["cost_per_hour"] == pytest.approx(6.5175)
    assert default["prices"]["basis"].startswith("median across providers")
    human = CliRunner().invoke(cli, SMALL_SOLVE[:-1] + ["--gpu", "h100-sxm", "--provider", "lambda"])
    assert "Prices: provider lambda: h100-sxm $2.99/h (lambda, 2026-05)" in human.stdout


def test_devices_a_provider_does_not_offer_are_left_out_and_said():
    only_h200 = CliRunner().invoke(cli, SMALL_SOLVE + ["--gpu", "h200", "--provider", "lambda"])
    assert only_h200.exit_code == 1
    assert "h200 is not offered by provider lambda" in only_h200.output
    mixed = CliRunner().invoke(cli, SMALL_SOLVE + ["--gpu", "h200", "--gpu", "a10", "--provider", "lambda"])
    assert mixed.exit_code == 0, mixed.output
    plan = json.loads(mixed.stdout)
    assert {g["gpu"] for g in plan["replicas"]} == {"a10"}
    assert plan["cost_per_hour"] == pytest.approx(0.86)  # Lambda gpu_1x_a10
    assert plan["prices"]["not_offered"] == ["h200"]


def test_estimate_reports_the_price_it_used():
    argv = ["estimate", "--model", "llama-2-7b", "--method", "fp16", "--gpu", "h200", "--framework", "vllm", "--json"]
    runner = CliRunner()
    aws = json.loads(runner.invoke(cli, argv + ["--provider", "aws"]).stdout)
    assert aws["cost_per_hour"] == pytest.approx(63.296 / 8)  # p5en.48xlarge
    assert aws["prices"]["devices"][0]["provider"] == "aws"
    lambda_ = json.loads(runner.invoke(cli, argv + ["--provider", "lambda"]).stdout)
    assert lambda_["cost_per_hour"] is None and lambda_["prices"]["not_offered"] == ["h200"]


def test_list_gpus_json_shows_price_per_hour_and_provider():
    rows = {r["id"]: r for r in json.loads(CliRunner().invoke(cli, ["list", "gpus", "--json"]).stdout)}
    assert rows["h100-sxm"]["price_per_hour"] == pytest.approx(6.5175)
    assert rows["h100-sxm"]["provider"] == "median of 6 providers"
    assert len(rows["h100-sxm"]["offers"]) == 6
    assert rows["mi355x"]["price_per_hour"] is None and rows["mi355x"]["provider"] is None  # no dated price found
    runpod = {r["id"]: r for r in json.loads(CliRunner().invoke(cli, ["list", "gpus", "--json", "--provider",
                                                                      "runpod"]).stdout)}
    assert runpod["h100-sxm"]["price_per_hour"] == 3.49 and runpod["h100-sxm"]["provider"] == "runpod"
    assert runpod["a10g"]["price_per_hour"] is None


def test_a_user_catalog_adds_a_provider(tmp_path):
    catalog = tmp_path / "mycloud.toml"
    catalog.write_text(textwrap.dedent("""
        schema_version = 1
        [[price]]
        gpu = "h100-sxm"
        provider = "mycloud"
        usd_per_hour = 1.5
        as_of = "2026-11"
        source = "a test quote"
    """))
    rows = {r["id"]: r for r in json.loads(CliRunner().invoke(
        cli, ["list", "gpus", "--json", "--catalog", str(catalog), "--provider", "mycloud"]).stdout)}
    assert rows["h100-sxm"]["price_per_hour"] == 1.5
    # seven offers now: sorted 1.5, 2.99, 3.49, 6.155, 6.88, 10.98, 12.29 -> median 6.155
    default = {r["id"]: r for r in json.loads(CliRunner().invoke(
        cli, ["list", "gpus", "--json", "--catalog", str(catalog)]).stdout)}
    assert default["h100-sxm"]["price_per_hour"] == pytest.approx(6.155)


def test_one_provider_pricing_a_device_twice_is_an_error(tmp_path, capsys):
    catalog = tmp_path / "twice.toml"
    catalog.write_text(textwrap.dedent("""
        schema_version = 1
        [[price]]
        gpu = "h100-sxm"
        provider = "lambda"
        usd_per_hour = 1.5
        as_of = "2026-11"
        source = "a test quote"
    """))
    assert main(["list", "gpus", "--catalog", str(catalog)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "h100-sxm from lambda" in err[0]


def test_unknown_provider_from_the_api(world):
    with pytest.raises(QuantplanError, match="unknown provider 'nowhere'"):
        world.with_prices({}, "nowhere")


def test_an_infinite_price_is_one_line_and_exit_2(capsys):
    assert main(SMALL_SOLVE + ["--gpu", "a10", "--price", "a10=inf"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--price a10=inf" in err[0] and "finite" in err[0]

"""The deployment config: defaults derived from the catalog, and errors that name field and fix."""

from __future__ import annotations

from decimal import Decimal

import pytest

from inferplane.config import ConfigError, DeploymentConfig, from_mapping, load

from ..conftest import EXAMPLE, with_gke_proxy_subnet


def problems(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        from_mapping(data)
    return dict(caught.value.problems)


def test_shipped_example_is_nemotron_ultra_at_tp8_on_eight_h100():
    config = load(EXAMPLE)
    assert config.model_spec.key == "nemotron-ultra-253b"
    assert config.tensor_parallel_size == 8
    assert config.max_model_len == 131072
    assert config.served_model_name == "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1"


def test_defaults_come_from_the_catalog(make_config):
    config = make_config()
    assert config.tensor_parallel_size == 8  # smallest TP where 506.8 GB + a 128K sequence fit
    assert config.input_price_per_million == Decimal("0.60")
    assert config.output_price_per_million == Decimal("1.80")
    assert config.reasoning_default_on is True
    assert config.cache_size_gib == 567  # 506.8 GB x 1.2, in GiB, rounded up
    llama = make_config(model={"name": "llama-3.3-70b-instruct"})
    assert llama.tensor_parallel_size == 4
    assert llama.input_price_per_million == Decimal("0.23")


def test_startup_budget_derives_from_weights_and_cache_kind(make_config):
    # (506.8 GB / 1 GB/s + 600 s) x 1.5 = 1660.2 s -> 1670 s at a 10 s period
    assert make_config().startup_budget_seconds == 1670
    # downloading at start: (506.8 / 0.25 + 600) x 1.5 = 3940.8 -> 3950
    assert make_config(model_cache={"kind": "empty_dir"}).startup_budget_seconds == 3950
    assert make_config(probes={"startup_budget_seconds": 900}).startup_budget_seconds == 900


def test_non_eu_region_is_refused_with_the_fix():
    found = problems({"cloud": "eks", "region": "us-east-1"})
    assert "not an EU/EEA region" in found["region"]
    assert "eu-central-1" in found["region"] and "residency.require_eu: false" in found["region"]


@pytest.mark.parametrize("cloud,region", [("gke", "europe-west2"), ("gke", "europe-west6"),
                                          ("eks", "eu-west-2"), ("eks", "eu-central-2")])
def test_london_and_zurich_are_outside_the_eu(cloud, region):
    assert "region" in problems({"cloud": cloud, "region": region})


def test_residency_can_be_waived_only_explicitly():
    config = from_mapping({"cloud": "eks", "region": "us-east-1", "residency": {"require_eu": False},
                           "model_cache": {"storage_class": "gp3"}})
    assert config.region == "us-east-1"


def test_zone_must_be_in_region():
    found = problems({"cloud": "gke", "region": "europe-west4", "zone": "europe-west1-b",
                      "ingress": {"source_cidrs": ["10.129.0.0/23"]}})
    assert "not in region" in found["zone"]
    assert from_mapping({"cloud": "scaleway", "region": "fr-par", "zone": "fr-par-2"}).zone == "fr-par-2"
    assert from_mapping({"cloud": "eks", "region": "eu-west-1", "zone": "eu-west-1a",
                         "model_cache": {"storage_class": "gp3"}}).zone == "eu-west-1a"


def test_tp_too_small_for_the_weights_carries_the_numbers():
    found = problems({"cloud": "gke", "region": "europe-west4",
                      "accelerator": {"tensor_parallel_size": 4}})
    message = found["accelerator.tensor_parallel_size"]
    assert "506.8 GB" in message and "4 x 85.5 GB" in message and "tensor_parallel_size 8" in message


def test_context_that_does_not_fit_points_at_max_model_len():
    found = problems({"cloud": "gke", "region": "europe-west4",
                      "model": {"name": "nemotron-ultra-253b-fp8"},
                      "accelerator": {"tensor_parallel_size": 4}})
    assert "lower max_model_len to 125952" in found["model.max_model_len"]


def test_unknown_fields_and_bad_types_name_the_field():
    found = problems({"cloud": "gke", "region": "europe-west4", "replicaz": 2,
                      "model": {"max_model_len": "lots"}, "replicas": 0})
    assert found["replicaz"] == "unknown field; did you mean 'replicas'?"
    assert "valid integer" in found["model.max_model_len"] and "'lots'" in found["model.max_model_len"]
    assert "greater than or equal to 1" in found["replicas"]


def test_unknown_model_and_accelerator_list_the_known_ones():
    found = problems({"model": {"name": "gpt-5"}, "accelerator": {"type": "TPU"}})
    assert "nemotron-ultra-253b" in found["model.name"]
    assert "H100-80G" in found["accelerator.type"]


@pytest.mark.parametrize("image,fragment", [
    ("vllm/vllm-openai:latest", "floats"),
    ("vllm/vllm-openai", "no tag"),
    ("registry:5000/vllm", "no tag"),
])
def test_images_must_be_pinned(image, fragment):
    assert fragment in problems({"image": {"vllm": image}})["image.vllm"]


def test_image_digest_and_registry_port_are_accepted():
    digest = "vllm/vllm-openai@sha256:" + "a" * 64
    assert from_mapping({"image": {"vllm": digest}}).image.vllm == digest
    assert from_mapping({"image": {"vllm": "registry:5000/vllm:v1"}}).image.vllm.endswith(":v1")


def test_cloud_without_the_machine_is_refused():
    found = problems({"cloud": "scaleway", "region": "fr-par", "accelerator": {"type": "A100-80G"}})
    assert "sells no A100-80G" in found["accelerator.type"] and "H100-80G" in found["accelerator.type"]


def test_flags_owned_by_config_fields_cannot_be_smuggled_in_extra_args():
    found = problems({"model": {"extra_args": ["--tensor-parallel-size=4"]}})
    assert "accelerator.tensor_parallel_size" in found["model.extra_args"]


def test_replicas_cannot_share_a_read_write_once_cache():
    found = problems({"replicas": 2})
    assert "ReadWriteOnce" in found["model_cache.access_mode"]
    assert from_mapping({"replicas": 2, "model_cache": {"access_mode": "ReadOnlyMany"}}).replicas == 2


def test_host_path_cache_needs_a_path_and_sizes_must_hold_the_weights():
    assert "/mnt/models" in problems({"model_cache": {"kind": "host_path"}})["model_cache.host_path"]
    assert "smaller than the weights" in problems({"model_cache": {"size_gib": 100}})["model_cache.size_gib"]


def test_names_must_be_dns_labels():
    assert "DNS label" in problems({"name": "Nemotron_Ultra"})["name"]


def test_yaml_errors_carry_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cloud: gke\nregion: [europe-west4\n")
    with pytest.raises(ConfigError) as caught:
        load(bad)
    assert "line 3" in str(caught.value) or "line 2" in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(tmp_path / "list.yaml")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        from_mapping({"cloud": "eks", "region": "us-east-1", "accelerator": {"tensor_parallel_size": 4},
                      "model_cache": {"storage_class": "gp3"}})
    fields = [field for field, _ in caught.value.problems]
    assert fields == ["region", "accelerator.tensor_parallel_size"]
    assert str(caught.value).startswith("invalid deployment config:")


def test_default_config_is_the_local_embedded_one():
    config = DeploymentConfig()
    assert (config.cloud, config.region) == ("local", "local")


def test_cold_and_warm_start_estimates_per_cache_kind(make_config):
    config = make_config()
    download, verify = 506.8 / 0.25, 506.8 / 2.0
    cold, warm = config.start_seconds("pvc")
    assert warm == pytest.approx(506.8 / 1.0 + 600)
    assert cold == pytest.approx(warm + download + verify)
    cold, warm = config.start_seconds("host_path")
    assert warm == pytest.approx(506.8 / 2.0 + 600) and cold == pytest.approx(warm + download + verify)
    assert config.start_seconds("empty_dir") == pytest.approx((download + 600, download + 600))
    faster = make_config(model_cache={"download_gb_per_second": 1.0})
    assert faster.start_seconds("empty_dir")[0] == pytest.approx(506.8 + 600)


def test_every_problem_is_reported_in_one_run():
    # An unknown key, a negative price, a non-EU region and TP=4: the first two used to hide the
    # others until the next run.
    found = problems(with_gke_proxy_subnet({
        "cloud": "gke", "region": "us-central1", "tensor_paralel_size": 8,
        "metering": {"input_price_per_million": -1}, "accelerator": {"tensor_parallel_size": 4}}))
    assert set(found) == {"tensor_paralel_size", "metering.input_price_per_million", "region",
                          "accelerator.tensor_parallel_size"}
    assert "not an EU/EEA region" in found["region"]
    assert "use tensor_parallel_size 8" in found["accelerator.tensor_parallel_size"]


def test_a_cross_check_that_a_dropped_bad_value_could_cause_is_not_reported():
    # accelerator.type is invalid: sizing against the default accelerator would be a guess.
    found = problems({"cloud": "gke", "region": "us-central1", "accelerator": {"type": "TPU",
                                                                           "tensor_parallel_size": 4}})
    assert "accelerator.type" in found and "region" in found
    assert "accelerator.tensor_parallel_size" not in found


def test_unknown_fields_suggest_the_closest_field_or_where_it_belongs():
    found = problems({"cloud": "gke", "region": "europe-west4", "replicaz": 2,
                      "accelerator": {"tensor_paralel_size": 8},
                      "cost": {"input_price_per_million": 1}, "frobnicate": True})
    assert found["accelerator.tensor_paralel_size"] == "unknown field; did you mean 'tensor_parallel_size'?"
    assert found["replicaz"] == "unknown field; did you mean 'replicas'?"
    assert found["cost.input_price_per_million"] == ("unknown field here; it belongs at "
                                                      "metering.input_price_per_million")
    assert found["frobnicate"] == "unknown field; remove it or fix its spelling"


# -- the ledger must survive the pod by default (issue 11, item 12) ------------------------------


@pytest.mark.parametrize("cloud, region", [("gke", "europe-west4"), ("eks", "eu-central-1"),
                                           ("scaleway", "fr-par"), ("existing", "europe-west4")])
def test_every_cloud_ships_usage_to_the_central_ledger_by_default(cloud, region):
    """Was: central off everywhere, so records lived on the pod's emptyDir and died with it."""
    data = with_gke_proxy_subnet({"cloud": cloud, "region": region})
    if cloud == "eks":
        data["model_cache"] = {"storage_class": "gp3"}
    config = from_mapping(data)
    assert config.ledger.central is True
    assert load(EXAMPLE).ledger.central is True


def test_local_keeps_its_ledger_in_the_pod():
    assert from_mapping({"cloud": "local"}).ledger.central is False


def test_a_cloud_deployment_whose_records_die_with_the_pod_is_refused_with_the_fix():
    found = problems(with_gke_proxy_subnet({"cloud": "gke", "region": "europe-west4",
                                            "ledger": {"central": False}}))
    assert set(found) == {"ledger.central"}
    assert "ledger.pod_local: true" in found["ledger.central"]
    opted_in = from_mapping(with_gke_proxy_subnet({"cloud": "gke", "region": "europe-west4",
                                                   "ledger": {"central": False, "pod_local": True}}))
    assert opted_in.ledger.central is False


def test_tool_calling_for_a_model_without_a_known_parser_is_an_error_naming_the_field(monkeypatch):
    import dataclasses

    from inferplane.catalog import models

    bare = dataclasses.replace(models.MODELS["llama-3.3-70b-instruct"], key="no-parser-model",
                               tool_calling=None)
    monkeypatch.setitem(models.MODELS, "no-parser-model", bare)
    found = problems({"model": {"name": "no-parser-model", "tool_calling": True}})
    message = found["model"]
    assert "model.tool_calling" in message and "no-parser-model" in message
    assert "tool_calling: false" in message
    # Left unset it follows the catalog: off for this model, on for Nemotron.
    assert from_mapping({"model": {"name": "no-parser-model"}}).model.tool_calling_enabled is False
    assert from_mapping({}).model.tool_calling_enabled is True

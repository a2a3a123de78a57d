"""The catalog as the UI shows it, read from the Definitions: descriptions that render, a column schema on
every table asset, the landing zone upstream of raw, freshness on gold and the index, figures for people."""

import re

import dagster as dg
import numpy as np

from fer_platform.catalog import COLUMN_SCHEMA
from fer_platform.core import catalog, plots
from fer_platform.core.report import figure, markdown_table
from fer_platform.definitions import defs

GRAPH = defs.resolve_asset_graph()
TABLE_ASSETS = [*catalog.schemas(), "image_embeddings"]
PUBLISHED = [k for k in catalog.schemas() if k.startswith("gold_")] + ["search_index"]


def _descriptions() -> dict[str, str]:
    out = {}
    for node in GRAPH.asset_nodes:
        out[node.key.to_user_string()] = node.description or ""
    for key in GRAPH.asset_check_keys:
        out[key.to_user_string()] = GRAPH.get_check_spec(key).description or ""
    repo = defs.get_repository_def()
    for job in repo.get_all_jobs():
        out[f"job {job.name}"] = job.description or ""
    for sensor in repo.sensor_defs:
        out[f"sensor {sensor.name}"] = sensor.description or ""
    for schedule in repo.schedule_defs:
        out[f"schedule {schedule.name}"] = schedule.description or ""
    return out


def test_no_description_holds_a_placeholder_that_markdown_would_swallow():
    """``<split>`` outside a code span renders as nothing (an unknown HTML tag): placeholders are written
    `{split}` in backticks."""
    descriptions = _descriptions()
    assert len(descriptions) > 20
    bare = {}
    for name, text in descriptions.items():
        outside = re.sub(r"`[^`]*`", "", text)  # code spans render verbatim
        found = re.findall(r"<[A-Za-z/][^<>]*>", outside)
        if found:
            bare[name] = found
    assert bare == {}
    assert "`raw/images/fer2013/{split}/{emotion}/{name}`" in descriptions["raw_images"]


def test_every_table_asset_publishes_its_columns_before_it_is_materialised():
    for name in TABLE_ASSETS:
        schema = GRAPH.get(dg.AssetKey(name)).metadata[COLUMN_SCHEMA]
        assert isinstance(schema, dg.TableSchema)
        assert [c.name for c in schema.columns] == [c[0] for c in catalog.columns(name)], name
    silver = {
        c.name: c.type for c in GRAPH.get(dg.AssetKey("silver_embeddings")).metadata[COLUMN_SCHEMA].columns
    }
    assert silver["vector"] == "fixed_size_list<float>[512]" and silver["load_date"] == "date32[day]"
    raw = [c.name for c in GRAPH.get(dg.AssetKey("raw_images")).metadata[COLUMN_SCHEMA].columns]
    assert raw[-2:] == ["emotion", "load_date"]  # the Hive folders, read back as columns


def test_the_landing_zone_is_an_external_asset_upstream_of_raw():
    landing = GRAPH.get(dg.AssetKey("landing_zone"))
    assert not landing.is_materializable and landing.group_name == "ingest"
    assert GRAPH.get(dg.AssetKey("raw_images")).parent_keys == {dg.AssetKey("landing_zone")}


def test_gold_and_the_index_carry_a_freshness_check_not_a_time_window_policy():
    # a time-window policy counts materialisations: a day without new data would fail it (a false alarm)
    checks = GRAPH.asset_check_keys
    for name in PUBLISHED:
        assert GRAPH.get(dg.AssetKey(name)).freshness_policy is None, name
        layer = "raw" if name in ("gold_daily_loads", "gold_duplicates") else "silver"
        assert dg.AssetCheckKey(dg.AssetKey(name), f"rebuilt_after_{layer}") in checks, name


def test_figures_are_rounded_for_people():
    assert (
        figure(0.17799999999999996) == "0.178"
        and figure(12345.6) == "12346"
        and figure(0.000123) == "0.000123"
    )
    table = markdown_table([{"a": 0.17799999999999996, "b": 3, "c": None}], ["a", "b", "c"])
    assert "| 0.178 | 3 |  |" in table


def test_the_heatmap_spreads_its_colours_over_close_cosines_and_labels_them_apart():
    rng = np.random.default_rng(0)
    m = 0.995 + rng.uniform(0, 0.004, (7, 7))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    low, high, decimals = plots.heatmap_scale(m)
    off = m[~np.eye(7, dtype=bool)]
    assert (low, high) == (off.min(), off.max())
    labels = {f"{v:.{decimals}f}" for v in off}
    assert decimals >= 3 and len(labels) == len(set(np.round(off, 6)))  # no two different cosines alike
    assert plots.heatmap(m, [str(i) for i in range(7)], "t").startswith(b"\x89PNG")

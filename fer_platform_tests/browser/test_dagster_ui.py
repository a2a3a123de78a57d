"""The Dagster UI as a data catalog, in a real headless Chromium against `fer-platform dev` after a small
`demo`: the lineage starts at the landing zone, an asset page shows its columns, Materialize on the vector
layers opens no "upstream not materialized" dialog, and a partition materialised through the UI's dialog
(Materialize -> emotion and load date -> Launch) runs to success (polled through GraphQL)."""

import subprocess
import sys
import time

import pytest
from playwright.sync_api import expect

from fer_platform.partitions import utc_today
from fer_platform_tests.servers import dev_server, free_port, graphql

pytestmark = pytest.mark.slow


def _runs(url: str, partition: str) -> dict[str, str]:
    """run id -> status of the runs of ``partition``."""
    data = graphql(
        url,
        '{ runsOrError(filter: {tags: [{key: "dagster/partition", value: "%s"}]}) '
        "{ ... on Runs { results { runId status } } } }" % partition,
    )
    return {r["runId"]: r["status"] for r in data["data"]["runsOrError"]["results"]}


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """A small demo (two train and one test image per emotion, untuned weights), then `fer-platform dev` on
    its home, on a free port; stopped by SIGTERM to its process group, its PostgreSQL stopped after."""
    home = tmp_path_factory.mktemp("ui") / "home"
    cli = [sys.executable, "-m", "fer_platform.cli", "--home", str(home)]
    demo = subprocess.run(
        [*cli, "demo", "--per-class", "2", "--test-per-class", "1", "--skip-training", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with dev_server(cli, port, timeout=240):
        yield url


def test_the_ui_is_a_catalog_and_a_partition_materialises_through_its_dialog(dagster_ui, page):
    url = dagster_ui
    # the lineage starts where the data starts: the landing zone, upstream of raw_images
    page.goto(f"{url}/assets/raw_images?view=lineage")
    page.get_by_text("landing_zone").first.wait_for()
    # an asset page shows its columns before anything else, with their types
    page.goto(f"{url}/assets/silver_embeddings")
    page.get_by_text("fixed_size_list<float>[512]").wait_for()
    # the column's description can be drawn after its type (CI once counted 0 right after the type
    # appeared): waited for, then exactly one
    expect(page.get_by_text("L2-normalised in silver")).to_have_count(1, timeout=30_000)

    # the served model was recorded by the demo's first load: Materialize asks nothing about it
    page.goto(f"{url}/assets/image_embeddings")
    page.get_by_role("button", name="Materialize…").click()
    page.get_by_role("dialog").get_by_text("Launch runs to materialize image_embeddings").wait_for()
    assert page.get_by_text("have not been materialized").count() == 0
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()

    # a partition through the dialog: happy, the latest load date (the demo's), one run
    partition = f"happy|{utc_today().isoformat()}"
    before = _runs(url, partition)
    page.goto(f"{url}/assets/bronze_images")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Select a partition or create one").first.click()
    page.get_by_placeholder("Filter partitions").fill("happy")
    page.locator("text=happy >> visible=true").last.click()
    page.keyboard.press("Escape")
    dialog.get_by_role("button", name="Latest").click()
    dialog.get_by_role("button", name="Launch 1 run").click()

    deadline, status = time.monotonic() + 300, {}
    while time.monotonic() < deadline:
        status = {k: v for k, v in _runs(url, partition).items() if k not in before}
        if status and all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in status.values()):
            break
        time.sleep(2)
    assert list(status.values()) == ["SUCCESS"], status

"""The search page in headless chromium against `fer-platform serve` on a small loaded lake.

Upload a face and see k neighbour images (each one loaded) with their emotions and distances, narrow them
to one emotion, pick a stored test image instead, see the gold plots load; a file that is no image gets one
line in ``#error``. No page logs a console error or loses a request.
"""

import re

import pytest

from fer_platform.core.gold_plots import GOLD_PLOTS
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.search.query import find_similar
from fer_platform.core.storage import Storage
from fer_platform_tests.helpers import face

pytestmark = pytest.mark.slow

# True once ``#results`` holds ``n`` hits (any number > 0 when n is null), each with a loaded image and,
# when ``emotion`` is not null, that emotion.
RESULTS_READY = """([n, emotion]) => {
    const hits = [...document.querySelectorAll('#results .hit')];
    if (hits.length === 0 || (n !== null && hits.length !== n)) return false;
    return hits.every((hit) => {
        const img = hit.querySelector('img'), label = hit.querySelector('.emotion');
        return img && img.complete && img.naturalWidth > 0 && label
            && (emotion === null || label.textContent.trim() === emotion);
    });
}"""
HITS = """(hits) => hits.map((hit) => ({
    emotion: hit.querySelector('.emotion').textContent.trim(),
    distance: hit.querySelector('.distance').textContent.trim(),
    width: hit.querySelector('img').naturalWidth,
}))"""
IMAGES_LOADED = """(selector) => {
    const imgs = [...document.querySelectorAll(selector)];
    return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


def hits(page) -> list[dict]:
    return page.eval_on_selector_all("#results .hit", HITS)


def wait_for_results(page, n: int | None, emotion: str | None = None) -> list[dict]:
    page.wait_for_function(RESULTS_READY, arg=[n, emotion])
    page.wait_for_function(IMAGES_LOADED, arg="#query img")
    assert page.inner_text("#error").strip() == ""
    return hits(page)


def assert_ranked(found: list[dict]) -> None:
    assert all(h["emotion"] in EMOTIONS and h["width"] > 0 for h in found), found
    assert all(re.fullmatch(r"\d+\.\d{4}", h["distance"]) for h in found), found
    distances = [float(h["distance"]) for h in found]
    assert distances == sorted(distances) and 0.0 <= distances[0] and distances[-1] <= 2.0


def assert_shows(found: list[dict], served, image: bytes, k: int, emotion: str | None = None) -> None:
    """The page shows what the search itself answers for this query (emotions in order, distances)."""
    expected = find_similar(Storage(str(served.lake)), served.spec, image=image, k=k, emotion=emotion)
    assert [h["emotion"] for h in found] == [h["emotion"] for h in expected["hits"]]
    for shown, hit in zip(found, expected["hits"], strict=True):
        assert float(shown["distance"]) == pytest.approx(hit["distance"], abs=6e-5)  # shown to 4 decimals


def open_page(page, served) -> None:
    page.goto(served.url + "/")
    page.wait_for_selector("#search")


def test_upload_a_face_see_k_neighbours_then_filter_by_emotion(page, served, tmp_path):
    query = tmp_path / "query.png"
    query.write_bytes(face("happy", 9999))  # not one of the lake's faces
    open_page(page, served)
    assert page.eval_on_selector_all("#emotion option", "os => os.map((o) => o.value)") == ["", *EMOTIONS]

    page.fill("#k", "6")
    page.set_input_files("#file", str(query))
    page.click("#search")
    found = wait_for_results(page, 6)
    assert_ranked(found)
    assert_shows(found, served, query.read_bytes(), 6)

    page.select_option("#emotion", "sad")
    page.click("#search")
    found = wait_for_results(page, 3, "sad")  # k = 6, but the lake holds three sad faces
    assert_ranked(found)
    assert [h["emotion"] for h in found] == ["sad"] * 3
    assert_shows(found, served, query.read_bytes(), 6, "sad")
    assert page.problems == []


def test_pick_a_stored_test_image_searches_by_its_id(page, served):
    open_page(page, served)
    ids = [v for v in page.eval_on_selector_all("#pick option", "os => os.map((o) => o.value)") if v]
    assert ids and all(served.images[i]["split"] == "test" for i in ids)

    page.fill("#k", "3")
    chosen = ids[-1]
    page.select_option("#pick", chosen)
    found = wait_for_results(page, 3)
    assert_ranked(found)
    assert served.images[chosen]["emotion"] in page.inner_text("#query")
    assert page.problems == []


def test_gold_plots_are_images_that_loaded(page, served):
    open_page(page, served)
    page.wait_for_function(IMAGES_LOADED, arg="#plots img")
    widths = page.eval_on_selector_all("#plots img", "imgs => imgs.map((img) => img.naturalWidth)")
    assert len(widths) == len(GOLD_PLOTS) and all(w > 0 for w in widths)  # the lake holds every gold table
    assert page.problems == []


def test_a_file_that_is_no_image_gets_one_line_in_error(page, served, tmp_path):
    bogus = tmp_path / "face.png"
    bogus.write_text("not an image\n")
    open_page(page, served)
    page.set_input_files("#file", str(bogus))
    page.click("#search")
    page.wait_for_function("() => document.querySelector('#error').textContent.trim() !== ''")
    message = page.inner_text("#error").strip()
    assert "\n" not in message and len(message) < 300
    assert page.eval_on_selector_all("#results .hit", "hs => hs.length") == 0
    # The refused upload is the only request that failed (a 4xx, which chromium also logs to the console;
    # choosing the file and clicking Search may each have sent it).
    http = [p for p in page.problems if p.startswith("HTTP ")]
    assert http and all(re.match(r"HTTP 4\d\d: http://127\.0\.0\.1:\d+/search", p) for p in http), (
        page.problems
    )
    assert all(p.startswith(("HTTP 4", "console: Failed to load resource")) for p in page.problems)

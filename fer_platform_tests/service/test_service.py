"""`fer-platform serve` as a real process on 127.0.0.1 over a loaded lake and a real PostgreSQL: searches by
upload and by id on both backends, images and metadata, the page and its plots, one-line JSON errors for
bad input, nothing written, and a rebuild of the index picked up while queries keep being answered."""

import hashlib
import http.client
import io
import itertools
import json
import threading
import time
import urllib.parse

import pytest
from PIL import Image

from fer_platform.assets.search import search_index
from fer_platform.core.gold_plots import table_key
from fer_platform.core.layout import EMOTIONS
from fer_platform_tests.helpers import encoded, face
from fer_platform_tests.served import MAX_UPLOAD, publish

pytestmark = pytest.mark.slow

MODEL = "resnet18-random-s0-fidelity"
BACKENDS = ("index", "pgvector")
UNKNOWN = "f" * 64


def multipart(data: bytes, filename: str = "face.png", field: str = "file") -> tuple[bytes, dict]:
    boundary = "fer-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(service, data: bytes, **params):
    body, headers = multipart(data)
    return service.json("POST", f"/search?{urllib.parse.urlencode(params)}", body, headers)


def lake_files(lake) -> dict:
    return {
        str(p.relative_to(lake)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in lake.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def lake_before(service, service_lake):
    return lake_files(service_lake["lake"])


@pytest.fixture(scope="module")
def test_images(service):
    status, answer = service.json("GET", "/images?split=test&limit=50")
    assert status == 200
    return answer["images"]


def test_health_says_what_is_served(service, lake_before):
    status, health = service.json("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["auth"] == "none"
    assert health["model"] == MODEL and health["pgvector"] is True and health["max_k"] == 100
    index = health["index"]
    assert index["loaded"] and index["size"] == 21 and index["kind"] == "flat" and len(index["digest"]) == 64


def test_the_listing_takes_each_emotion_in_turn(test_images):
    assert [r["emotion"] for r in test_images] == sorted(EMOTIONS)  # one test image per emotion
    assert all(r["split"] == "test" and r["url"] == f"/images/{r['image_id']}/bytes" for r in test_images)


def test_an_uploaded_stored_face_finds_itself_first_on_both_backends(service):
    query = face("sad", 10 * EMOTIONS.index("sad") + 1)  # the bytes of train/sad/sad1.png, loaded
    own = hashlib.sha256(query).hexdigest()
    answers = {}
    for backend in BACKENDS:
        status, result = upload(service, query, k=5, backend=backend)
        assert status == 200, result
        first = result["hits"][0]
        assert first["image_id"] == own and first["distance"] == pytest.approx(0.0, abs=1e-4), backend
        assert result["query"]["emotion"] == "sad" and result["query"]["url"] == f"/images/{own}/bytes"
        assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
        assert all(a["distance"] <= b["distance"] + 1e-6 for a, b in itertools.pairwise(result["hits"]))
        answers[backend] = [h["image_id"] for h in result["hits"]]
    assert answers["index"] == answers["pgvector"]


def test_an_uploaded_new_face_is_embedded_and_searched(service):
    status, result = upload(service, face("happy", 999), k=3, emotion="fear")
    assert status == 200, result
    assert result["query"]["url"] is None and "emotion" not in result["query"]  # not a stored image
    assert [h["emotion"] for h in result["hits"]] == ["fear"] * 3
    jpeg = encoded("L", fmt="JPEG", value=90)  # a 48x48 grayscale JPEG is a FER image too
    status, result = upload(service, jpeg, k=2, backend="pgvector")
    assert status == 200 and len(result["hits"]) == 2, result
    photo = encoded("RGB", size=(200, 150), fmt="JPEG")  # a colour photo: made 48x48 grayscale, then searched
    for backend in BACKENDS:
        status, result = upload(service, photo, k=4, backend=backend)
        assert status == 200 and len(result["hits"]) == 4, result


def test_a_search_by_id_leaves_the_query_out_and_both_backends_agree(service, test_images):
    for row in test_images[::3]:
        for emotion in (None, "fear", row["emotion"]):
            answers = {}
            for backend in BACKENDS:
                params = {"k": 5, "backend": backend, **({"emotion": emotion} if emotion else {})}
                status, result = service.json(
                    "GET", f"/images/{row['image_id']}/similar?{urllib.parse.urlencode(params)}"
                )
                assert status == 200, result
                ids = [h["image_id"] for h in result["hits"]]
                assert row["image_id"] not in ids and result["query"]["emotion"] == row["emotion"]
                if emotion:  # three images per emotion, the query never among them
                    assert len(ids) == (2 if emotion == row["emotion"] else 3)
                    assert {h["emotion"] for h in result["hits"]} == {emotion}
                else:
                    assert len(ids) == 5
                answers[backend] = ids
            assert answers["index"] == answers["pgvector"], (row["image_id"], emotion)


def test_an_image_and_its_metadata_come_from_the_lake(service, service_lake, test_images):
    row = test_images[0]
    status, meta = service.json("GET", f"/images/{row['image_id']}")
    assert status == 200 and meta["filepath"].startswith("raw/images/fer2013/test/") and meta["emotion"]
    status, headers, data = service.request("GET", meta["url"])
    assert status == 200 and headers["content-type"] == "image/png"
    assert data == (service_lake["lake"] / meta["filepath"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["image_id"]


def test_the_page_and_its_gold_plots(service):
    status, headers, html = service.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    page = html.decode()
    for element in (
        'input id="file" type="file"',
        'select id="pick"',
        'input id="k" type="number"',
        'select id="emotion"',
        '<option value="">any emotion</option>',
        'button id="search"',
        'id="query"',
        'id="results"',
        'id="error"',
        'id="plots"',
        'id="apikey"',
        '<script src="/page.js">',
    ):
        assert element in page, element
    assert "://" not in page  # nothing loaded from elsewhere
    status, headers, script = service.request("GET", "/page.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"://" not in script
    status, plots = service.json("GET", "/plots")
    assert status == 200 and [p["name"] for p in plots["plots"]] == [
        "class_balance",
        "agreement",
        "centroids",
    ]
    for p in plots["plots"]:
        status, headers, png = service.request("GET", p["url"])
        assert status == 200 and headers["content-type"] == "image/png", p
        assert Image.open(io.BytesIO(png)).format == "PNG"


def _chunked_post(service, path: str, size: int) -> tuple[int, bytes]:
    """A body sent in chunks, without a Content-Length."""
    parsed = urllib.parse.urlparse(service.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        body, headers = multipart(b"\0" * size)
        conn.request(
            "POST",
            path,
            body=iter([body[i : i + 4096] for i in range(0, len(body), 4096)]),
            headers=headers,
            encode_chunked=True,
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_bad_input_gets_a_4xx_with_a_one_line_json_error(service, test_images):
    known = test_images[0]["image_id"]
    text, _ = multipart(b"hello, I am not a face\n")
    huge_side, _ = multipart(encoded("L", size=(5000, 8)))
    apng = encoded("L")
    apng = apng[:33] + (8).to_bytes(4, "big") + b"acTL" + b"\0" * 8 + b"\0" * 4 + apng[33:]
    animated, _ = multipart(apng)
    too_big, form = multipart(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD)
    huge, _ = multipart(b"\0" * (MAX_UPLOAD + 64 * 1024))
    empty_form = b"--fer-test-boundary--\r\n"
    cases = [
        ("POST", "/search", text, form, 400, "not a PNG or JPEG"),
        ("POST", "/search", huge_side, form, 400, "too large: 5000x8"),
        ("POST", "/search", animated, form, 400, "APNG"),
        ("POST", "/search", too_big, form, 413, f"larger than {MAX_UPLOAD} bytes"),
        ("POST", "/search", huge, form, 413, "larger than"),
        ("POST", "/search", b"--nonsense\r\n\r\n", form, 400, ""),
        ("POST", "/search", empty_form, form, 422, "file"),
        ("POST", "/search", b'{"file": "x"}', {"Content-Type": "application/json"}, 422, "file"),
        ("POST", "/search?k=0", text, form, 422, "k:"),
        ("GET", f"/images/{UNKNOWN}/similar", None, {}, 404, "not in the index"),
        ("GET", f"/images/{UNKNOWN}/similar?backend=pgvector", None, {}, 404, "no vector"),
        ("GET", f"/images/{UNKNOWN}", None, {}, 404, "not in the index"),
        ("GET", f"/images/{UNKNOWN}/bytes", None, {}, 404, "not in the index"),
        ("GET", "/images/not-an-id/similar", None, {}, 422, "image_id"),
        ("GET", f"/images/{known}/similar?k=0", None, {}, 422, "k:"),
        ("GET", f"/images/{known}/similar?k=101", None, {}, 422, "less than or equal to 100"),
        ("GET", f"/images/{known}/similar?k=ten", None, {}, 422, "k:"),
        ("GET", f"/images/{known}/similar?emotion=joy", None, {}, 422, "emotion:"),
        ("GET", f"/images/{known}/similar?emotion=", None, {}, 422, "emotion:"),
        ("GET", f"/images/{known}/similar?backend=milvus", None, {}, 422, "backend:"),
        ("GET", "/images?limit=0", None, {}, 422, "limit:"),
        ("GET", "/images?split=validation", None, {}, 422, "split:"),
        ("GET", "/plots/nope", None, {}, 422, "name:"),
        ("GET", "/nowhere", None, {}, 404, "not found"),
        ("DELETE", f"/images/{known}", None, {}, 405, "method not allowed"),
    ]
    for method, path, body, headers, expected, says in cases:
        status, response_headers, raw = service.request(method, path, body, headers)
        assert status == expected, (method, path, status, raw[:300])
        assert response_headers["content-type"] == "application/json" and b"\n" not in raw, (path, raw)
        answer = json.loads(raw)
        assert list(answer) == ["error"] and answer["error"].strip() and says in answer["error"], (
            path,
            answer,
        )
    status, raw = _chunked_post(service, "/search", MAX_UPLOAD + 64 * 1024)  # no Content-Length to go by
    assert status == 413 and json.loads(raw) == {
        "error": f"the request body is larger than {MAX_UPLOAD + 16384} bytes"
    }


def test_the_service_wrote_nothing(service, service_lake, lake_before):
    assert lake_files(service_lake["lake"]) == lake_before


def test_a_rebuilt_index_is_picked_up_while_queries_keep_being_answered(service, service_lake, test_images):
    before = service.json("GET", "/health")[1]["index"]
    stop, failures, answered = threading.Event(), [], [0]

    def ask() -> None:
        i = 0
        while not stop.is_set():
            row = test_images[i % len(test_images)]
            i += 1
            try:
                status, result = service.json("GET", f"/images/{row['image_id']}/similar?k=5")
                ids = [h["image_id"] for h in result.get("hits", [])]
                if status != 200 or len(ids) != 5 or row["image_id"] in ids:
                    failures.append((status, result))
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - a failed request is what is counted
                failures.append(repr(exc))

    client = threading.Thread(target=ask)
    client.start()
    try:
        # the same silver as an HNSW graph: other files, another digest
        config = {"ops": {"search_index": {"config": {"hnsw_threshold": 10}}}}
        publish(service_lake["resources"], config, assets=[search_index])
        deadline, after = time.monotonic() + 60, before
        while time.monotonic() < deadline and after["digest"] == before["digest"]:
            time.sleep(0.2)
            after = service.json("GET", "/health")[1]["index"]
        time.sleep(1.0)  # and queries keep being answered by the new build
    finally:
        stop.set()
        client.join(30)
    assert after["digest"] != before["digest"] and after["kind"] == "hnsw" and after["size"] == 21
    assert after["reloads"] == before["reloads"] + 1
    assert failures == [] and answered[0] > 20, (failures[:3], answered)
    assert service.proc.poll() is None


def test_a_damaged_gold_table_or_an_unreadable_lake_file_is_a_503_in_one_line(
    service, service_lake, test_images
):
    """Trouble on the service's side is a 503 with one line, never a 500: a gold table that is no Parquet any
    more, an image whose lake path the lake cannot read (here: a folder where the file was). Put back
    after."""
    table = service_lake["lake"] / table_key("agreement")
    saved_table = table.read_bytes()
    image = service_lake["lake"] / test_images[0]["filepath"]
    saved_image = image.read_bytes()
    try:
        table.write_bytes(b"PAR1 this is no parquet table PAR1")
        image.unlink()
        image.mkdir()
        for path, says in (
            ("/plots/agreement", "gold table of plot agreement"),
            (test_images[0]["url"], "lake"),
        ):
            status, headers, raw = service.request("GET", path)
            assert status == 503 and headers["content-type"] == "application/json" and b"\n" not in raw, raw
            assert says in json.loads(raw)["error"], raw
    finally:
        table.write_bytes(saved_table)
        image.rmdir()
        image.write_bytes(saved_image)
    status, headers, _ = service.request("GET", "/plots/agreement")
    assert status == 200 and headers["content-type"] == "image/png"

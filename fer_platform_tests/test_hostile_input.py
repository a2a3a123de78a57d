"""Hostile input, as a new user would meet it: a catalogue of bad files beside good files of every emotion,
loaded by `fer-platform demo`. Every good file loads (also under odd names); every bad one is quarantined with
its one-line reason, never blocking the others; nothing outside the landing zone is read, and the lake holds
nothing that is not derived from a regular landing file."""

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import psycopg
import pytest
from PIL import Image

from fer_platform.core.errors import ConfigError
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.embedded import embedded_status
from fer_platform.core.storage import FileTooLarge, Storage
from fer_platform.resources.environments import max_file_bytes
from fer_platform_tests.helpers import face

pytestmark = pytest.mark.slow


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=30000, height=30000) -> bytes:
    """A PNG whose header declares a huge grayscale image (a decompression bomb), with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _chunk(b"IEND", b"")
    )


def apng() -> bytes:
    frames = [Image.new("L", (48, 48), v) for v in (0, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def jpeg(seed) -> bytes:
    pixels = (np.random.default_rng(seed).random((48, 48)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="JPEG")
    return buf.getvalue()


def test_the_hostile_catalogue_beside_good_files_of_every_emotion(tmp_path):
    landing, home, outside = tmp_path / "landing", tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    good: dict[str, bytes] = {}  # landing key -> bytes of every file that must load

    def put(key, data):
        path = landing / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    for i, emotion in enumerate(EMOTIONS):
        for j in range(2):
            key = f"train/{emotion}/good_{j}.png"
            good[key] = put(key, face(emotion, 10 * i + j)).read_bytes()
    # odd names the landing's filesystem accepts: they load (the lake name is fitted, the original kept)
    odd = {
        "train/happy/" + "l" * 246 + ".png": face("happy", 90),  # 250 characters
        "train/sad/new\nline.png": face("sad", 91),
        'train/fear/quote\'s "double"; semi;colon.png': face("fear", 92),
        "train/angry/visage été ünïcødé.png": face("angry", 93),
        "test/surprise/UPPER.PNG": face("surprise", 94),
        "test/neutral/kaggle.JPG": jpeg(95),
    }
    for key, data in odd.items():
        good[key] = put(key, data).read_bytes()

    png = face("happy", 99)
    secret_image = outside / "image.png"
    secret_image.write_bytes(face("disgust", 98))
    (outside / "folder").mkdir()
    (outside / "folder" / "x.png").write_bytes(face("disgust", 97))
    bad = {
        "train/happy/bomb.png": "wrong size 30000x30000",
        "train/happy/huge.png": "too large",
        "train/sad/trailing.png": "byte(s) after the end of the PNG image",
        "train/fear/animated.png": "animated PNG",
        "train/happy/passwd.png": "not a regular file: symbolic link",
        "train/disgust/outside.png": "not a regular file: symbolic link",
        "train/linked": "not a regular file: symbolic link",
        "train/neutral/pipe.png": "not a regular file: FIFO",
    }
    put("train/happy/bomb.png", bomb_png())
    with open(put("train/happy/huge.png", png), "r+b") as f:  # a valid image, then 100 MB (sparse)
        f.truncate(len(png) + 100 * 2**20)
    put("train/sad/trailing.png", face("sad", 80) + os.urandom(1024))
    put("train/fear/animated.png", apng())
    os.symlink("/etc/passwd", landing / "train/happy/passwd.png")
    os.symlink(secret_image, landing / "train/disgust/outside.png")
    os.symlink(outside / "folder", landing / "train/linked")
    os.mkfifo(landing / "train/neutral/pipe.png")

    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "fer_platform.cli",
                "--home",
                str(home),
                "demo",
                "--json",
                "--landing",
                str(landing),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout)
        reasons = {q["path"]: q["reason"] for q in summary["quarantined"]}
        for key, why in bad.items():
            assert why in reasons.get(key, ""), (key, reasons.get(key))
            assert "\n" not in reasons[key] and "root:" not in reasons[key]
        assert set(reasons) == set(bad), set(reasons) ^ set(bad)
        assert summary["loaded"] == len(good) and summary["not_logged"] == 0 and not summary["disagreements"]
        assert all(r["success"] for r in summary["runs"])
        assert summary["postgres_rows"] == summary["silver_rows"] == summary["index_size"] == len(good)

        # the lake holds nothing that is not derived from a regular landing file
        regular = {
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in landing.rglob("*")
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 2**20
        }
        raw = [p for p in (home / "lake/raw/images").rglob("*") if p.is_file()]
        assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in raw} == {
            hashlib.sha256(d).hexdigest() for d in good.values()
        }
        assert all(len(p.name.encode()) <= 200 for p in raw)
        for p in (home / "lake/quarantine").rglob("*"):
            if p.is_file():
                assert hashlib.sha256(p.read_bytes()).hexdigest() in regular, p
        passwd = open("/etc/passwd", "rb").read()
        secrets = (passwd[:64], secret_image.read_bytes())
        for p in (home / "lake").rglob("*"):
            if p.is_file() and not p.name.endswith(".parquet"):
                assert not any(s in p.read_bytes() for s in secrets), p
        # the original names are kept in the load log
        with psycopg.connect(embedded_status(home / "postgres")["dsn"]) as conn:
            paths = {r[0] for r in conn.execute("SELECT path FROM load_log WHERE status = 'loaded'")}
        assert paths == set(good)
    finally:
        subprocess.run(
            [sys.executable, "-m", "fer_platform.cli", "--home", str(home), "db", "stop"],
            capture_output=True,
            timeout=120,
        )


def test_a_file_bigger_than_the_cap_is_never_read_whole(tmp_path, monkeypatch):
    """The size cap is a setting; a file over it is judged by its size (no read), one under it by its
    content."""
    landing = tmp_path / "l"
    (landing / "train/happy").mkdir(parents=True)
    data = face("happy", 1)
    (landing / "train/happy/a.png").write_bytes(data)
    store = Storage(str(landing))
    assert store.read_bytes("train/happy/a.png", max_bytes=len(data)) == data
    with pytest.raises(FileTooLarge):
        store.read_bytes("train/happy/a.png", max_bytes=len(data) - 1)
    monkeypatch.setenv("FER_MAX_FILE_BYTES", "12x")
    with pytest.raises(ConfigError, match=re.escape("FER_MAX_FILE_BYTES='12x' is not a whole number")):
        max_file_bytes()

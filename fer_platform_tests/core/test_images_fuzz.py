"""Fuzzing the image validation (hypothesis): random bytes, and valid PNG/JPEG files mutated (bytes flipped,
cut, inserted, appended, header sizes rewritten), never raise anything but InvalidImage, each within a fixed
time and a fixed memory. It runs in a subprocess whose address space is capped (RLIMIT_AS), so an input that
made the decoder allocate a large image would fail with MemoryError instead of passing unnoticed."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import io, resource, struct, sys, time
    import numpy as np
    from PIL import Image
    from hypothesis import HealthCheck, given, settings, strategies as st
    from fer_platform.core import images

    def enc(fmt, **kw):
        buf = io.BytesIO()
        pixels = (np.random.default_rng(len(kw)).random((48, 48)) * 255).astype("uint8")
        Image.fromarray(pixels, "L").save(buf, format=fmt, **kw)
        return buf.getvalue()

    SEEDS = [(enc("PNG"), "a.png"), (enc("PNG", optimize=True), "b.png"), (enc("JPEG"), "c.jpg"),
             (enc("JPEG", progressive=True), "d.jpg"), (enc("JPEG", quality=100), "e.jpeg")]
    for data, name in SEEDS:
        images.validate(data, name)  # the seeds are valid

    # the address space: what this process has now, plus 128 MB
    # (a 15000x11000 grayscale image would need 165 MB)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 128 * 2**20, resource.RLIM_INFINITY))

    @st.composite
    def mutated(draw):
        data, name = draw(st.sampled_from(SEEDS))
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "append", "size"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[at] = draw(st.integers(0, 255))
            elif op == "cut":
                del data[at:]
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            elif op == "append":
                data += draw(st.binary(min_size=1, max_size=4096))
            elif op == "size" and len(data) > 24:  # a header that declares another size (a bomb: huge)
                w, h = draw(
                    st.sampled_from(
                        [(30000, 30000), (15000, 11000), (65535, 65535), (1, 1), (49, 48), (0, 48)]
                    )
                )
                if name.endswith(".png"):
                    data[16:24] = struct.pack(">II", w, h)
                else:
                    sof = data.find(b"\\xff\\xc0") if b"\\xff\\xc0" in data else data.find(b"\\xff\\xc2")
                    if sof > 0 and sof + 9 <= len(data):
                        data[sof + 5 : sof + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
        return bytes(data), name

    inputs = st.one_of(mutated(), st.tuples(st.binary(max_size=2048), st.sampled_from(["x.png", "x.jpg"])))
    worst = [0.0]
    count = [0]

    @settings(max_examples=int(sys.argv[1]), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def check(case):
        data, name = case
        started = time.perf_counter()
        try:
            images.validate(data, name)
        except images.InvalidImage as exc:
            assert str(exc) and "\\n" not in str(exc), repr(exc)
        worst[0] = max(worst[0], time.perf_counter() - started)
        count[0] += 1

    check()
    assert worst[0] < 1.0, f"slowest input took {worst[0]:.2f} s"
    print(f"ok {count[0]} inputs, slowest {worst[0] * 1000:.1f} ms, max rss "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    """
)


@pytest.mark.slow
def test_hostile_bytes_only_ever_raise_invalid_image_within_fixed_time_and_memory():
    out = subprocess.run([sys.executable, "-c", SCRIPT, "1500"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert out.stdout.startswith("ok 1500 inputs"), out.stdout

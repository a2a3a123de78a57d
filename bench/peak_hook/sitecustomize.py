"""Loaded at start-up by every Python process whose PYTHONPATH names this folder (bench_demo_peaks.py puts it
there for the demo it runs). With FER_PEAK_TRACE=<path>: a thread reads the process's RSS every 2 ms and,
each time it has risen 4 MiB above the last mark (marks restart after a fall of 40 MiB), records it with
the main thread's Python stack (file, line and function: no source is read, which would itself take
memory); at exit the marks and an RSS timeline (every 0.25 s) go to <path> as JSON. Without the variable:
nothing."""

import os

if os.environ.get("FER_PEAK_TRACE"):
    import atexit
    import json
    import sys
    import threading
    import time
    import traceback

    _OUT = os.environ["FER_PEAK_TRACE"]
    _PAGE = os.sysconf("SC_PAGE_SIZE")
    _MAIN = threading.main_thread().ident
    _marks: list = []
    _timeline: list = []
    _stop = threading.Event()

    def _rss_mib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE >> 20

    def _watch() -> None:
        mark, last = 0, 0.0
        while not _stop.is_set():
            rss, now = _rss_mib(), time.time()
            if now - last >= 0.25:
                _timeline.append((round(now, 2), rss))
                last = now
            if rss > mark + 4:
                mark = rss
                frame = sys._current_frames().get(_MAIN)
                # file, line and function only: reading the source lines (linecache) would cache every file
                # on the stack in this process and inflate the very RSS measured
                stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
                where = [f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(stack)][-24:]
                _marks.append({"t": round(now, 3), "rss": rss, "stack": where})
            elif rss < mark - 40:
                mark = rss
            time.sleep(0.002)

    threading.Thread(target=_watch, daemon=True, name="fer-peak-trace").start()

    @atexit.register
    def _dump() -> None:
        _stop.set()
        with open(_OUT, "w") as f:
            json.dump({"marks": _marks, "timeline": _timeline}, f)

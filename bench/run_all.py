"""Run every benchmark in bench/, one after the other (each prints its own figures).

.venv/bin/python bench/run_all.py            (make bench)
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_embeddings.py"],
    ["bench_lanes.py"],
    ["bench_bulk_load.py", "--images", "6000", "--write-rows", "6000", "--table-rows", "18000"],
    ["bench_vector_storage.py", "--rows", "12000"],
    ["bench_search.py"],
    ["bench_gold.py"],
    ["bench_reads_memory.py"],
    ["bench_landing_reads.py"],
    ["bench_serve.py"],
    ["bench_model.py"],
    ["bench_convergence.py"],
    ["bench_sensor.py"],
    ["bench_demo.py"],
    ["bench_scale.py", "--n", "2000"],  # the whole pipeline at 2,000 images; 35,887 and 250,000 by hand
]

if __name__ == "__main__":
    failed = []
    for args in BENCHES:
        print(f"\n$ python bench/{' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent).returncode:
            failed.append(args[0])
    sys.exit(1 if failed else 0)

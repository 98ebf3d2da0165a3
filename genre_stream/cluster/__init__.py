"""Archive-scale tagging on a Ray cluster: `genre-stream batch` (docs/CLUSTER.md).

The per-file work is the local one (``library.scan.process_job``: stamp, hash, ``analyse_file``);
only where it runs changes. The driver (the machine that runs the command, a node of the cluster)
lists the files, skips the ones its ledger says are done, sends paths (never audio) to Ray tasks,
and writes every result itself as it arrives, one JSON line or one index row at a time.

Ray is an optional dependency (the ``[cluster]`` extra): only ``runner.py`` imports it, inside
functions, so the runtime imports and works without it (tests/test_runtime_imports.py).

    worker.py    what a Ray worker process runs for one file: one onnxruntime session per process
    runner.py    the driver's side: connect, keep the cluster busy, turn Ray failures into outcomes
    ledger.py    the JSON-lines results file, which is also the record of what is done
    batch.py     a JSON-lines job: plan against the ledger, run, write; the library-index job (scan)
    progress.py  files/s, audio hours/s, ETA, errors, and the summary at the end
"""

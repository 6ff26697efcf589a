"""Imported by Python at start-up in every process whose PYTHONPATH holds this folder: with
GAHB_SCALE_STORE_OPS set, the driver of a study and each of its Ray workers (which inherit the
driver's environment) count their results-store operations (see counting_store.py)."""

import os

if os.environ.get("GAHB_SCALE_STORE_OPS"):
    import counting_store

    counting_store.install(os.environ["GAHB_SCALE_STORE_OPS"])

"""The study layer: spec (YAML → pydantic models → trial grid), runner (Ray), store (Parquet),
tracking (MLflow) and report (figures).

Only `gahb_scale.study.spec` is light: it imports neither Ray nor MLflow, so `gahb-scale validate`
stays fast. Import the heavier modules explicitly where they are needed.
"""

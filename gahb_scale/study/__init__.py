"""The study layer: Ray, MLflow and the results store (Parquet tables, model files, arrays), one
module per stage in the order data flows (the module map: docs/internals.md), run by `runner`.
What a study trains and measures is `gahb_scale.design`'s.
"""

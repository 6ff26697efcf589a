"""The study layer: Ray, MLflow and the results store (Parquet tables, model files, arrays), run by
`runner` stage by stage (the module map: docs/internals.md). What a study trains and measures is
`gahb_scale.design`'s.
"""

"""The study layer, one module per stage in the order data flows (the module map: docs/internals.md),
run by `runner` over the results `store`.

`spec`, `spec_file` and `trials` are light: they import neither Ray nor MLflow, so `gahb-scale
validate` stays fast. Import the heavier modules explicitly where they are needed.
"""

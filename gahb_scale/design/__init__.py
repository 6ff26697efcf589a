"""A study's design: what it trains and measures, without the machinery that runs it. The spec (its
pydantic models and the YAML reader), its grid of trials, its datasets as images, one model's and one
split pair's measures, and the transition table's columns. It imports neither Ray, MLflow nor
Parquet (`tests/test_layers.py` checks it), so `gahb-scale validate` stays fast and a notebook can
load a spec, draw a trial's images and measure a trained network as a study does.
"""

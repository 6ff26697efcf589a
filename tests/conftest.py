"""Settings for the whole test session."""

import os

# Ray 2.60 turns token authentication on for every new local cluster, with the token kept under
# ~/.ray and read once per process. Tests that give Ray a home of their own (results on object
# storage, the multi-node cluster) would then leave the test process holding one token and Ray's
# servers another. Every test cluster listens on this machine only, so the tests run without tokens.
os.environ["RAY_AUTH_MODE"] = "disabled"

# MLflow turns its usage telemetry off under pytest only when it is first imported inside a test;
# here it is imported while tests are collected, so the test process would start telemetry threads
# that try to reach the internet, and may still be running when the interpreter exits.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

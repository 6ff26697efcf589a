"""Settings for the whole test session."""

import os

# Ray 2.60 turns token authentication on for every new local cluster, with the token kept under
# ~/.ray and read once per process. Tests that give Ray a home of their own (results on object
# storage, the multi-node cluster) would then leave the test process holding one token and Ray's
# servers another. Every test cluster listens on this machine only, so the tests run without tokens.
os.environ["RAY_AUTH_MODE"] = "disabled"

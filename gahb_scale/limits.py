"""Upper bounds on what a study spec, and a folder of images, may ask for.

No bound here limits a study that could run: each lies beyond what a cluster could ever hold,
with margin. They exist so that a typo or a hostile file (a YAML alias bomb, a 5,000-digit
integer, `split_pairs: 100000000`, a 20 KB PNG of 13,000 x 13,000 pixels) is refused in
milliseconds, before anything is built, allocated or written, instead of hanging the command or
exhausting memory. docs/spec.md ("Bounds") states them and why.
"""

# --- the spec file -------------------------------------------------------------------------
# A spec is a few KB; a megabyte of YAML still parses in well under a second.
MAX_SPEC_BYTES = 2**20
# YAML nodes after every alias is expanded. A spec has a few hundred; ten nested lists of ten
# aliases each (the "billion laughs", 1.4 KB) have 10^10, more than memory holds once validated.
MAX_SPEC_NODES = 100_000
# Digits of an integer in the spec: 2**64 has 20, and no count or seed beyond it means anything
# (Python itself refuses to parse more than 4,300).
MAX_INT_DIGITS = 20

# --- what a study multiplies ------------------------------------------------------------------
# Models in one study (datasets x architectures x N x split pairs x seeds x 2). Even at seconds per
# model on a thousand GPUs, 10^5 models is days of training and 10^5 model folders.
MAX_MODELS = 100_000
# Image side in pixels: one float32 feature map of the paper's UNet (64 channels) at 4096 x 4096
# is 4 GiB, per image of a batch; the paper uses 80.
MAX_IMAGE_SIZE = 4096
# Pixels of the images one trial holds (2 N + test images, each image_size^2): 2^40 bytes of
# uint8 is a terabyte, beyond any node's memory.
MAX_HELD_PIXELS = 2**40
# Images per training batch: 65,536 images of 80 x 80 already need ~100 GiB of activations.
MAX_BATCH_SIZE = 2**16
# Samples drawn, and images analysed, per model: each costs a full run of the sampler.
MAX_SAMPLES = 2**16
# Gradient steps of one training run (and sampler steps): 10^9 steps at 1,000 a second is 11 days.
MAX_STEPS = 10**9
# Bootstrap resamples of one interval: 10^6 is far past where the interval stops changing.
MAX_BOOTSTRAP = 10**6
# Training workers of one trial (DDP): more GPUs than any cluster lends one run.
MAX_WORKERS = 4096
# Parameters of one network: fp32 weights, gradients and two Adam moments of 10^10 parameters are
# 160 GB, more than any one GPU holds (a pack or a DDP worker holds whole networks).
MAX_PARAMETERS = 10**10
# Seeds (training, sampling, pixel shuffles): every generator used takes them (numpy's, torch's up
# to 2^64 - 1), and seed + sample index stays far inside all of them.
MAX_SEED = 2**32 - 1
# Halvings of a disc drawn on a finer grid: 2**4 times finer is already 256 fine pixels per pixel.
MAX_DISC_ANTIALIASING = 4

# --- names and paths the results use -----------------------------------------------------------
# Study, dataset and architecture names become file and folder names (with a suffix); most file
# systems allow 255 bytes per name.
MAX_NAME_LENGTH = 100
# A local results folder: its path plus the longest relative path a study writes below it
# (tables/<table>/<study>/<id>.parquet, models/<trial>/snapshots/..., Ray Tune's checkpoints, a
# few hundred bytes) must stay under Linux's PATH_MAX of 4096 bytes.
MAX_RESULTS_PATH_LENGTH = 3500

# --- image files ---------------------------------------------------------------------------------
# Pixels of one image file, checked from its header before it is decoded: above any camera's
# 50 megapixels; decoded as RGB it is 192 MiB, times 8 decoding threads 1.5 GiB on the driver.
MAX_IMAGE_PIXELS = 2**26

# --- connections ---------------------------------------------------------------------------------
# Seconds to wait for a Ray cluster or a tracking server to accept a connection: ray.init retries
# one that never answers forever, silently, and MLflow for minutes.
CONNECT_TIMEOUT_S = 10

"""A paper-size image folder: preparation time, and the memory a trial needs against the pool's size.

Generates `--images` JPEGs (default 50,000) at CelebA's 178×218 (smooth random colour fields), then
prepares them at 80×80 by the authors' CelebA recipe (crop, bicubic resize, channel-mean grey,
near-duplicates removed) into a cache, timing it. Then, in a fresh process per N (10 and 20,000), does
what a training trial does with its data: reads its split A (uint8, as the trainer holds it) from the
cached pool. It prints the process's peak resident memory (VmHWM) and its growth over the process
right after imports, against the size of the pool as float32.

    python benchmarks/folder_memory.py [--images 50000] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 80
TRIAL = """
import json, sys
def rss(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
from gahb_scale.design.datasets import split_images
from gahb_scale.design.spec_file import parse_spec
spec = parse_spec(json.loads(sys.argv[1]))
base = rss("VmRSS:")
images = split_images(spec.datasets[0], spec.image_size, int(sys.argv[2]), spec.test_images, 0, parts=("A",),
                      keep_uint8=True, prepared={spec.datasets[0].name: {"cache": sys.argv[3]}})["A"]
print(json.dumps({"base": base, "peak": rss("VmHWM:"), "images": images.numel() * images.element_size()}))
"""


def make_jpeg(args: tuple[Path, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)  # a smooth field once resized
    field = np.asarray(Image.fromarray(small).resize((178, 218), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = np.clip(field + rng.integers(-12, 13, field.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--folder", default=None, help="where to put the JPEGs and the cache (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.folder or scratch)
        faces, cache = root / "faces", root / "cache"
        faces.mkdir(parents=True, exist_ok=True)
        todo = [(faces / f"{i:06d}.jpg", i) for i in range(args.images) if not (faces / f"{i:06d}.jpg").exists()]
        with ProcessPoolExecutor() as pool:
            list(pool.map(make_jpeg, todo, chunksize=256))
        spec = {"name": "bench", "image_size": SIZE, "test_images": 64, "train_sizes": [10],
                "datasets": [{"name": "faces", "kind": "folder",
                              "params": {"path": str(faces), "crop": "celeba", "cache_dir": str(cache)}}],
                "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}]}
        from gahb_scale.design.datasets import finite_pool
        from gahb_scale.design.spec_file import parse_spec

        started = time.perf_counter()
        pool_images = finite_pool(parse_spec(spec).datasets[0], SIZE)
        prepared = time.perf_counter() - started
        float_pool = len(pool_images) * SIZE * SIZE * 4
        print(f"{args.images} JPEGs of 178x218: prepared at {SIZE}x{SIZE} in {prepared:.0f} s "
              f"({len(pool_images)} kept, {pool_images.duplicates_removed} near-duplicates removed); "
              f"the pool as float32 would be {float_pool / 2**20:.0f} MiB")
        for n in (10, min(20_000, (len(pool_images) - 64) // 2)):  # a small --images cannot hold N = 20,000
            out = subprocess.run([sys.executable, "-c", TRIAL, json.dumps(spec), str(n),
                                  str(pool_images.cache_files[0])], capture_output=True,
                                 text=True, check=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            print(f"trial N={n}: peak RSS {m['peak'] / 2**20:.0f} MiB ({m['peak'] / float_pool:.2f} x float32 pool), "
                  f"{(m['peak'] - m['base']) / 2**20:.0f} MiB above the process after imports "
                  f"({(m['peak'] - m['base']) / float_pool:.2f} x; target <= 0.2), its images "
                  f"{m['images'] / 2**20:.0f} MiB uint8")


if __name__ == "__main__":
    main()

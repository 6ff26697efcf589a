"""The images a trial trains and is tested on: split A or B of pair p, and the pair's held-out set.

Two kinds of pools:
- synthetic (calpha, discs): an unlimited supply, so A, B and the test set are three independent
  streams drawn with their own seeds. Image i of a stream depends only on (seed, i), so A for
  N = 10 is the start of A for N = 100 (nested, as in the paper) and a trial's images do not depend
  on the other train sizes in the spec — which is what lets trial ids stay stable.
- finite (folder, photos): one fixed pool; the pair's seed orders it and A = "first N", B = "last N",
  test = the head (`gahb_scale.data.split_pair`), the authors' recipe.
"""

from __future__ import annotations

from torch import Tensor

from ..data import build_pool, disc_images, photo_pool_size, shuffle_pixels, split_pair
from .spec import DatasetSpec

_STREAMS = {"A": 0, "B": 1, "test": 2}


def _stream_seed(pair: int, part: str) -> int:
    """Seed of one synthetic stream: split pair p draws A, B and test from 3p, 3p+1, 3p+2."""
    return 3 * pair + _STREAMS[part]


def _finite_pool(dataset: DatasetSpec, size: int) -> Tensor:
    if dataset.kind == "photos":
        return build_pool("photos", photo_pool_size(size), size, seed=0)
    from ..data import load_image_folder, to_float_images
    return to_float_images(load_image_folder(dataset.params["path"], size, cache_dir=dataset.params.get("cache_dir")))


def split_images(dataset: DatasetSpec, size: int, n: int, n_test: int, pair: int,
                 parts: tuple[str, ...] = ("A", "B", "test")) -> dict[str, Tensor]:
    """{"A": (n,1,S,S), "B": (n,1,S,S), "test": (n_test,1,S,S)} for split pair `pair`, in [0, 1],
    restricted to `parts` (synthetic images cost time to make: a trial needs only its own split)."""
    if dataset.kind in ("calpha", "discs"):
        counts = {"A": n, "B": n, "test": n_test}
        images = {name: build_pool(dataset.kind, counts[name], size, seed=_stream_seed(pair, name), **dataset.params)
                  for name in parts}
    else:
        pool = _finite_pool(dataset, size)
        split = split_pair(len(pool), n, n_test, seed=pair)
        images = {name: pool[index] for name, index in (("A", split.a), ("B", split.b), ("test", split.test))
                  if name in parts}
    if dataset.pixel_shuffle_seed is not None:
        images = {name: shuffle_pixels(x, dataset.pixel_shuffle_seed) for name, x in images.items()}
    return images


def test_disc_parameters(dataset: DatasetSpec, size: int, n_test: int, pair: int) -> Tensor:
    """(n_test, 5) generator parameters of the held-out images of a discs dataset (the stream
    `split_images` draws them from), for the family's tangent space at each of them."""
    if dataset.kind != "discs":
        raise ValueError(f"dataset {dataset.name!r} is {dataset.kind!r}, not discs: it has no disc parameters")
    return disc_images(n_test, size, seed=_stream_seed(pair, "test"), **dataset.params)[1]

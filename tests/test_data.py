"""Tests of the data package: synthetic families, image folders, embedded photos, transforms, splits."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import pywt
import torch

from gahb_scale.data import (
    PHOTO_NAMES,
    calpha_images,
    disc_images,
    load_image_folder,
    near_duplicates,
    photo_patches,
    photo_pool,
    photo_pool_size,
    pixel_permutation,
    pool_size_needed,
    render_discs,
    shuffle_pixels,
    split_pair,
    to_float_images,
    unshuffle_pixels,
)
from gahb_scale.data.calpha import _box_smooth_2x2, _contour, _mask_below
from gahb_scale.data.discs import DB2_OFFSET
from gahb_scale.data.embedded import _all_tiles, _grid_tiles
from gahb_scale.data.image_folder import CachedImages
from gahb_scale.dataset_kinds import (DATASET_KINDS, CalphaParams, build_pool, held_out_disc_parameters,
                                     split_pair_images)
from gahb_scale.errors import UserInputError


def assert_grey_images(images: torch.Tensor, n: int, size: int, ringing: float = 0.0) -> None:
    """(n, 1, size, size) float32 in [0, 1], give or take the `ringing` of a low-pass filter."""
    assert images.shape == (n, 1, size, size)
    assert images.dtype == torch.float32
    assert images.min() >= -ringing and images.max() <= 1.0 + ringing


# ---------------------------------------------------------------- C^alpha


def test_calpha_shape_range_and_determinism():
    images = calpha_images(6, alpha=2.0, size=24, seed=3)
    assert_grey_images(images, 6, 24)
    assert torch.equal(images, calpha_images(6, alpha=2.0, size=24, seed=3))
    assert not torch.equal(images, calpha_images(6, alpha=2.0, size=24, seed=4))
    # Image i depends on (seed, i) only, so a larger n extends a smaller one.
    assert torch.equal(images[:2], calpha_images(2, alpha=2.0, size=24, seed=3))


def test_calpha_images_do_not_depend_on_the_generation_chunk(monkeypatch):
    import gahb_scale.data.calpha as calpha

    expected = calpha_images(20, alpha=1.5, size=8, seed=2)
    monkeypatch.setattr(calpha, "_CHUNK", 7)
    assert torch.equal(calpha_images(20, alpha=1.5, size=8, seed=2), expected)


def test_calpha_beta_defaults_to_alpha_and_changes_the_backgrounds():
    images = calpha_images(3, alpha=2.0, size=16, seed=0)
    assert torch.equal(images, calpha_images(3, alpha=2.0, size=16, seed=0, beta=2.0))
    assert not torch.equal(images, calpha_images(3, alpha=2.0, size=16, seed=0, beta=0.5))


def test_calpha_sides_differ_in_brightness_either_way_round():
    # One background is rescaled to [u1, 1] and the other to [0, u2], the bright one on a random
    # side of the boundary, which stays near the middle row: compare the top and bottom quarters.
    images = calpha_images(40, alpha=3.0, size=32, seed=1)[:, 0]
    top_minus_bottom = images[:, :8].mean(dim=(1, 2)) - images[:, -8:].mean(dim=(1, 2))
    assert top_minus_bottom.abs().mean() > 0.2
    assert 0.2 < (top_minus_bottom > 0).float().mean() < 0.8


def test_contour_regularity_grows_with_alpha():
    noise = 2 * np.random.default_rng(0).random((200, 32)) - 1
    roughness = [np.abs(np.diff(_contour(noise, alpha, 32), n=2, axis=1)).mean() for alpha in (0.5, 1.0, 2.0, 4.0)]
    assert roughness == sorted(roughness, reverse=True)
    assert roughness[0] > 5 * roughness[-1]


def test_contour_is_centred_and_clipped_to_the_image():
    noise = 2 * np.random.default_rng(1).random((100, 32)) - 1
    contour = _contour(noise, 1.0, 32)
    assert contour.min() >= 0 and contour.max() <= 32
    assert abs(np.median(contour) - 16) <= 2
    assert np.array_equal(_contour(np.zeros((1, 8)), 2.0, 8), np.full((1, 8), 4))


def test_mask_is_one_on_and_below_the_contour_and_smoothing_keeps_size():
    mask = _mask_below(np.array([[0, 2, 4, 4]]), 4)[0]
    assert np.array_equal(mask[:, 0], [1, 1, 1, 1])
    assert np.array_equal(mask[:, 1], [0, 0, 1, 1])
    assert np.array_equal(mask[:, 2], [0, 0, 0, 0])
    smooth = _box_smooth_2x2(mask[None])[0]
    assert smooth.shape == (4, 4)
    assert smooth.min() >= 0 and smooth.max() <= 1
    assert smooth[0, 0] == 0.5  # the step between columns 0 and 1 is blurred


@pytest.mark.parametrize("kwargs", [dict(alpha=-1.0), dict(alpha=1.0, size=1), dict(alpha=1.0, n=0),
                                    dict(alpha=float("nan")), dict(alpha=1.0, beta=-2.0),
                                    dict(alpha=1.0, seed=None)])
def test_calpha_rejects_bad_parameters(kwargs):
    arguments = dict(n=2, size=16) | kwargs
    with pytest.raises(UserInputError):
        calpha_images(**arguments)


def test_calpha_bounds_agree_with_its_parameter_model():
    """alpha = 0 (a white-noise boundary) is refused by the generator as by the spec's model; beta = 0 by neither."""
    with pytest.raises(UserInputError, match="alpha"):
        calpha_images(2, alpha=0.0, size=16)
    with pytest.raises(ValueError, match="alpha"):
        CalphaParams(alpha=0.0)
    assert CalphaParams(alpha=1.0, beta=0.0).beta == 0 and calpha_images(2, alpha=1.0, size=16, beta=0.0).shape[0] == 2


# ---------------------------------------------------------------- discs


def reference_discs(params: torch.Tensor, size: int, antialiasing: int) -> torch.Tensor:
    """Independent construction: the ramped disc on the fine grid, then pywt's own db2 2-D
    decomposition level by level, written out with explicit loops over images."""
    scale = 2 ** antialiasing
    fine = (np.arange(size * scale) + 0.5)
    out = []
    for centre_x, centre_y, radius, foreground, background in params.tolist():
        distance = np.hypot(fine[None, :] - scale * centre_x, fine[:, None] - scale * centre_y)
        image = background + (foreground - background) * np.clip(scale * radius - distance + 0.5, 0, 1)
        for _ in range(antialiasing):
            coeffs = pywt.wavedec2(image, "db2", mode="symmetric", level=1)
            half = image.shape[0] // 2
            image = coeffs[0][1:1 + half, 1:1 + half] / 2
        out.append(image)
    return torch.tensor(np.array(out))[:, None]


def test_discs_shapes_parameters_and_determinism():
    images, params = disc_images(20, 24, seed=5)
    assert_grey_images(images, 20, 24, ringing=0.12)
    assert params.shape == (20, 5) and params.dtype == torch.float32
    centre_x, centre_y, radius, foreground, background = params.T
    assert ((radius >= 3) & (radius < (24 - 3) / 2)).all()  # the authors' U[3, (size - 3)/2)
    for centre in (centre_x, centre_y):
        assert ((centre - radius >= 0) & (centre + radius <= 24)).all()
    assert ((foreground >= 0) & (foreground <= 1) & (background >= 0) & (background <= 1)).all()
    again_images, again_params = disc_images(20, 24, seed=5)
    assert torch.equal(images, again_images) and torch.equal(params, again_params)
    assert not torch.equal(params, disc_images(20, 24, seed=6)[1])
    assert torch.equal(params[:3], disc_images(3, 24, seed=5)[1])


def test_disc_images_need_room_for_the_smallest_radius():
    with pytest.raises(UserInputError, match="size"):
        disc_images(4, 9)


def test_render_discs_reproduces_disc_images_exactly():
    images, params = disc_images(10, 20, seed=2, antialiasing=3)
    assert torch.equal(render_discs(params, 20, antialiasing=3), images)


@pytest.mark.parametrize("antialiasing", [0, 1, 2])
def test_render_discs_is_the_db2_low_pass_of_the_fine_disc(antialiasing):
    params = disc_images(6, 20, seed=7)[1].double()
    assert torch.allclose(render_discs(params, 20, antialiasing), reference_discs(params, 20, antialiasing),
                          atol=1e-12)


@pytest.mark.parametrize("antialiasing", [1, 2, 3])
def test_rendered_disc_sits_where_its_parameters_say_up_to_the_db2_offset(antialiasing):
    params = torch.tensor([[20.0, 17.3, 6.5, 1.0, 0.0]], dtype=torch.float64)
    image = render_discs(params, 40, antialiasing)[0, 0]
    centres = torch.arange(40, dtype=torch.float64) + 0.5
    mass = image.sum()
    offset = DB2_OFFSET * (1 - 2.0 ** -antialiasing)
    assert float((image.sum(0) * centres).sum() / mass) == pytest.approx(20.0 - offset, abs=2e-3)
    assert float((image.sum(1) * centres).sum() / mass) == pytest.approx(17.3 - offset, abs=2e-3)
    assert float(mass) == pytest.approx(math.pi * 6.5 ** 2, rel=2e-3)


def test_disc_greys_inside_and_outside_and_a_smooth_edge():
    images, params = disc_images(8, 32, seed=1)
    centres = torch.arange(32) + 0.5
    for image, (centre_x, centre_y, radius, foreground, background) in zip(images[:, 0], params):
        distance = torch.hypot(centres[None, :] - centre_x, centres[:, None] - centre_y)
        # the low-pass reaches about 2 pixels from the edge (a ripple of 1e-4 beyond); db2 keeps a flat grey
        assert torch.allclose(image[distance < radius - 2], foreground, atol=1e-3)
        assert torch.allclose(image[distance > radius + 2], background, atol=1e-3)
        edge = image[(distance - radius).abs() < 0.3]
        low, high = sorted([foreground.item(), background.item()])
        assert ((edge > low + 1e-3) & (edge < high - 1e-3)).any()


def test_disc_rendering_is_smooth_in_the_parameters():
    # The disc's area is pi r^2, so summing d(image)/dr over pixels gives (fg - bg) 2 pi r,
    # and moving the centre moves mass without changing its total.
    params = torch.tensor([[16.3, 15.7, 7.2, 0.9, 0.2]], dtype=torch.float64)
    step = 1e-3

    def total_derivative(index):
        shift = torch.zeros(5, dtype=torch.float64)
        shift[index] = step
        return ((render_discs(params + shift, 32) - render_discs(params - shift, 32)) / (2 * step)).sum().item()

    radius_derivative = total_derivative(2)
    assert radius_derivative == pytest.approx(0.7 * 2 * math.pi * 7.2, rel=0.02)
    assert abs(total_derivative(0)) < 0.01 * radius_derivative
    assert abs(total_derivative(1)) < 0.01 * radius_derivative
    assert total_derivative(3) == pytest.approx(math.pi * 7.2 ** 2, rel=0.02)


def test_render_discs_rejects_bad_params():
    with pytest.raises(ValueError, match="shape"):
        render_discs(torch.zeros(3, 4), 16)
    with pytest.raises(UserInputError, match="antialiasing"):
        render_discs(torch.zeros(3, 5), 16, antialiasing=-1)
    with pytest.raises(UserInputError, match="antialiasing"):  # the bound the discs' parameter model has
        render_discs(torch.zeros(3, 5), 16, antialiasing=5)


# ---------------------------------------------------------------- transforms


def test_pixel_permutation_is_a_fixed_permutation():
    perm = pixel_permutation(64, seed=9)
    assert perm.dtype == torch.int64
    assert torch.equal(perm.sort().values, torch.arange(64))
    assert torch.equal(perm, pixel_permutation(64, seed=9))
    assert not torch.equal(perm, pixel_permutation(64, seed=10))


def test_shuffle_then_unshuffle_is_identity_and_uses_one_permutation():
    images = torch.rand(4, 2, 8, 8)
    shuffled = shuffle_pixels(images, seed=1)
    assert not torch.equal(shuffled, images)
    assert torch.equal(unshuffle_pixels(shuffled, seed=1), images)
    # Every image and channel moves its pixel k to the same place: output pixel k is input perm[k].
    perm = pixel_permutation(64, seed=1)
    assert torch.equal(shuffled.reshape(4, 2, 64), images.reshape(4, 2, 64)[..., perm])
    assert torch.equal(shuffle_pixels(images[2:3], seed=1), shuffled[2:3])


def test_to_float_images():
    floats = to_float_images(torch.tensor([[0, 128, 255]], dtype=torch.uint8))
    assert floats.dtype == torch.float32
    assert torch.allclose(floats, torch.tensor([[0.0, 128 / 255, 1.0]]))
    with pytest.raises(TypeError):
        to_float_images(torch.zeros(2))


# ---------------------------------------------------------------- splits


def test_split_pair_is_disjoint_deterministic_and_nested():
    small = split_pair(100, 10, 7, seed=4)
    large = split_pair(100, 40, 7, seed=4)
    for split in (small, large):
        a, b, test = (set(t.tolist()) for t in (split.a, split.b, split.test))
        assert not (a & b) and not (a & test) and not (b & test)
        assert all(0 <= i < 100 for i in a | b | test)
    assert (len(small.a), len(small.b), len(small.test)) == (10, 10, 7)
    assert set(small.a.tolist()) <= set(large.a.tolist())
    assert set(small.b.tolist()) <= set(large.b.tolist())
    assert torch.equal(small.test, large.test)
    again = split_pair(100, 10, 7, seed=4)
    assert all(torch.equal(x, y) for x, y in zip((small.a, small.b, small.test), (again.a, again.b, again.test)))
    assert not torch.equal(small.a, split_pair(100, 10, 7, seed=5).a)


def test_split_pair_can_use_the_whole_pool_and_no_more():
    assert pool_size_needed(10, 5) == 25
    full = split_pair(25, 10, 5, seed=0)
    assert sorted(torch.cat([full.a, full.b, full.test]).tolist()) == list(range(25))
    with pytest.raises(UserInputError) as error:
        split_pair(24, 10, 5, seed=0)
    assert "25" in str(error.value) and "24" in str(error.value)


@pytest.mark.parametrize("kind", ["discs", "photos"])
def test_split_pair_images_are_nested_in_n_and_a_b_and_test_differ(kind):
    """Synthetic: three seeded streams per pair; finite: one permuted pool. Either way A for N = 3 is
    the start of A for N = 6, the held-out set does not depend on N, and A, B, test share no image."""
    small = split_pair_images(kind, {}, 16, 3, 4, pair=1)
    large = split_pair_images(kind, {}, 16, 6, 4, pair=1)
    assert torch.equal(small["A"], large["A"][:3]) and torch.equal(small["test"], large["test"])
    flat = torch.cat([large["A"], large["B"], large["test"]]).flatten(1)
    assert len(torch.unique(flat, dim=0)) == 16  # no image twice
    assert not torch.equal(small["A"], split_pair_images(kind, {}, 16, 3, 4, pair=2)["A"])
    assert split_pair_images(kind, {}, 16, 3, 4, pair=1, parts=("B",)).keys() == {"B"}
    # each split at its own N in one call: each as a call at that N gives it, B's a subset of B at N = 6
    mixed = split_pair_images(kind, {}, 16, {"A": 6, "B": 3}, 4, pair=1)
    assert torch.equal(mixed["A"], large["A"]) and torch.equal(mixed["B"], small["B"])
    assert torch.equal(mixed["test"], large["test"])
    assert {tuple(image) for image in mixed["B"].flatten(1).tolist()} <= {tuple(image) for image in
                                                                         large["B"].flatten(1).tolist()}
    shuffled = split_pair_images(kind, {}, 16, 3, 4, pair=1, pixel_shuffle_seed=0)["A"]
    assert not torch.equal(shuffled, small["A"]) and torch.equal(shuffled.flatten(1).sort(1).values,
                                                                 small["A"].flatten(1).sort(1).values)


def test_split_pair_images_name_a_bad_parameter():
    for draw in (lambda: split_pair_images("discs", {"radius": 3}, 16, 2, 2, pair=0),
                 lambda: held_out_disc_parameters({"antialiasing": -1}, 16, 2, pair=0)):
        with pytest.raises(UserInputError, match="bad parameters for dataset kind 'discs'"):
            draw()


def test_held_out_disc_parameters_draw_the_held_out_discs():
    params = held_out_disc_parameters({}, 16, 4, pair=1)
    held_out = split_pair_images("discs", {}, 16, 3, 4, pair=1, parts=("test",))["test"]
    assert torch.equal(disc_images(4, 16, seed=5)[1], params)  # the pair's third stream: 3p + 2
    assert torch.equal(disc_images(4, 16, seed=5)[0], held_out)


# ---------------------------------------------------------------- image folders


def save_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def white_centre(width, height):
    """Black image whose centred square of side min(width, height) is white."""
    array = np.zeros((height, width), np.uint8)
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    array[top:top + side, left:left + side] = 255
    return array


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    save_image(root / "a_wide.png", white_centre(30, 12))
    save_image(root / "b_red.jpeg", np.broadcast_to(np.array([255, 0, 0], np.uint8), (20, 20, 3)))
    save_image(root / "sub" / "c_tall.PNG", white_centre(10, 26))
    save_image(root / "sub" / "d_noise.JPG", np.random.default_rng(0).integers(0, 256, (17, 23, 3)))
    (root / "notes.txt").write_text("not an image")
    return root


def authors_grey(path, size, crop_box=None):
    """The authors' recipe written out: crop, PIL bicubic resize of the RGB image, channel mean / 255."""
    with PIL.Image.open(path) as image:
        image = image.convert("RGB")
        if crop_box is None:
            side = min(image.size)
            left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
            crop_box = (left, top, left + side, top + side)
        rgb = np.asarray(image.crop(crop_box).resize((size, size), PIL.Image.Resampling.BICUBIC), dtype=np.float64)
    return torch.from_numpy(rgb / 255.0).mean(dim=2).float()


def test_load_image_folder_shapes_order_and_preprocessing(folder):
    prepared = load_image_folder(str(folder), 8)
    images = prepared.float_images()
    assert prepared.grey.shape == (4, 1, 8, 8) and prepared.grey.dtype == np.uint8
    assert prepared.files == ("a_wide.png", "b_red.jpeg", "sub/c_tall.PNG", "sub/d_noise.JPG")
    assert_grey_images(images, 4, 8)
    # Sorted by relative path; the centre square of both framed images is white.
    assert (images[0] == 1).all() and (images[2] == 1).all()
    assert ((images[1] - 1 / 3).abs() <= 2 / 255).all()  # grey = channel mean: red is 1/3 (JPEG: a level off)
    for i, name in enumerate(prepared.files):  # the authors' float grey, rounded to the nearest level
        assert torch.allclose(images[i, 0], authors_grey(folder / name, 8), atol=0.5 / 255 + 1e-6)
    assert np.array_equal(load_image_folder(folder, 8, limit=2).grey, prepared.grey[:2])
    assert torch.equal(prepared.float_images(torch.tensor([3, 1])), images[[3, 1]])


def test_celeba_and_top_left_crops_are_the_authors(tmp_path):
    face = np.zeros((218, 178, 3), np.uint8)  # an aligned CelebA image: 178 wide, 218 high
    face[29:-29, 9:-9] = np.random.default_rng(1).integers(0, 256, (160, 160, 3))
    save_image(tmp_path / "celeba" / "000001.png", face)
    celeba = load_image_folder(tmp_path / "celeba", 80, crop="celeba").float_images()[0, 0]
    assert torch.allclose(celeba, authors_grey(tmp_path / "celeba" / "000001.png", 80, (9, 29, 169, 189)),
                          atol=0.5 / 255 + 1e-6)
    centred = load_image_folder(tmp_path / "celeba", 80, crop="center").float_images()[0, 0]
    assert not torch.allclose(centred, celeba, atol=0.05)
    bedroom = np.random.default_rng(2).integers(0, 256, (256, 341, 3)).astype(np.uint8)  # LSUN: short side 256
    save_image(tmp_path / "lsun" / "b.png", bedroom)
    top_left = load_image_folder(tmp_path / "lsun", 32, crop="top_left").float_images()[0, 0]
    assert torch.allclose(top_left, authors_grey(tmp_path / "lsun" / "b.png", 32, (0, 0, 256, 256)),
                          atol=0.5 / 255 + 1e-6)
    save_image(tmp_path / "tiny" / "t.png", np.zeros((50, 40)))
    with pytest.raises(UserInputError, match=r"t\.png.*CelebA crop"):
        load_image_folder(tmp_path / "tiny", 8, crop="celeba")


@pytest.fixture
def folder_with_duplicates(tmp_path):
    """Six distinct photographs-to-be (smooth random fields) and four planted near-duplicates, each
    saved after its original: an exact copy, a contrast/brightness change, a copy with mild noise and
    a negative (correlation -1, which the authors' |corr| > 0.95 also removes)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "faces"
    originals = []
    for i in range(6):
        field = rng.normal(size=(8, 8))
        image = np.asarray(PIL.Image.fromarray(((field - field.min()) / np.ptp(field) * 200 + 20).astype(np.uint8))
                           .resize((64, 64), PIL.Image.Resampling.BICUBIC), dtype=float)
        originals.append(image)
        save_image(root / f"{i:02d}.png", image)
    save_image(root / "10_copy_of_00.png", originals[0])
    save_image(root / "11_contrast_of_01.png", 0.5 * originals[1] + 60)
    save_image(root / "12_noisy_02.png", np.clip(originals[2] + rng.normal(0, 4, (64, 64)), 0, 255))
    save_image(root / "13_negative_of_03.png", 255 - originals[3])
    return root


def test_near_duplicates_are_removed_before_any_split(folder_with_duplicates):
    prepared = load_image_folder(folder_with_duplicates, 32)
    assert prepared.duplicates_removed == 4
    assert prepared.files == tuple(f"{i:02d}.png" for i in range(6))  # the earlier image of each pair stays
    kept_all = load_image_folder(folder_with_duplicates, 32, near_duplicate_threshold=None)
    assert len(kept_all) == 10 and kept_all.duplicates_removed == 0
    assert np.array_equal(kept_all.grey[:6], prepared.grey)
    flags = near_duplicates(kept_all.float_images())
    assert flags.tolist() == [False] * 6 + [True] * 4
    # at 32 px the authors compare full images: the noisy copy correlates at 0.9988, the contrast
    # change at 0.9998 (uint8 rounding), so a stricter threshold keeps the one or both
    assert near_duplicates(kept_all.uint8_images(), threshold=0.9995).tolist() == [False] * 6 + [True, True, False, True]
    assert near_duplicates(kept_all.uint8_images(), threshold=0.9999).tolist() == [False] * 6 + [True, False, False, True]
    # a flat image correlates with nothing

    assert not near_duplicates(torch.ones(3, 1, 8, 8)).any()


def test_near_duplicates_compare_chunks_against_every_earlier_image():
    images = torch.rand(50, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    images[37] = 2 * images[4] + 1  # the same image up to gain and offset, far apart in the order
    images[49] = images[37]
    for chunk in (7, 1000):
        assert near_duplicates(images, chunk_size=chunk).nonzero().flatten().tolist() == [37, 49]


def test_a_study_reads_its_folder_as_prepared_when_the_folder_changes_while_it_runs(folder, tmp_path, monkeypatch):
    """A run prepares a folder's pool once and records it (its datasets row, each model's
    pool.json); its tasks read that prepared pool, not the folder again, so images added, removed or
    renamed while the study runs cannot put a model on other images than those recorded."""
    from gahb_scale.design.datasets import prepare_datasets, split_images
    from gahb_scale.design.spec_file import parse_spec

    monkeypatch.chdir(tmp_path)
    spec = parse_spec({"name": "f", "image_size": 8, "train_sizes": [1], "test_images": 1,
                       "datasets": [{"name": "mine", "kind": "folder", "params": {"path": str(folder)}}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}]})
    prepared = prepare_datasets(spec).cache()
    dataset = spec.datasets[0]
    before = split_images(dataset, 8, 1, 1, 0, prepared=prepared)
    (folder / "a_wide.png").unlink()
    save_image(folder / "e_new.png", white_centre(9, 9))
    after = split_images(dataset, 8, 1, 1, 0, prepared=prepared)
    assert all(torch.equal(before[part], after[part]) for part in ("A", "B", "test"))
    # read without the run's pool, the changed folder is another pool: other split pairs
    assert not all(torch.equal(before[part], split_images(dataset, 8, 1, 1, 0)[part]) for part in ("A", "B", "test"))
    # a task needs the prepared pool, not the folder (on a cluster: only the driver reads it) ...
    folder.rename(tmp_path / "elsewhere")
    assert torch.equal(split_images(dataset, 8, 1, 1, 0, parts=("A",), prepared=prepared)["A"], before["A"])
    # ... and a node that does not see the prepared pool is told where it should be
    with pytest.raises(UserInputError, match=r"dataset 'mine': its prepared images .* are not on node .*shared volume"):
        split_images(dataset, 8, 1, 1, 0, prepared={"mine": {"cache": str(tmp_path / "nowhere.npy")}})


def test_load_image_folder_cache_is_reused_without_decoding(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_image_folder(folder, 8, cache_dir=cache)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
    # read back from the file row by row, in any order, runs and repeats included
    assert isinstance(first.source, CachedImages)
    index = torch.tensor([3, 1, 2, 3, 0])
    assert torch.equal(first.uint8_images(index), torch.from_numpy(first.grey[index.numpy()]))
    assert torch.equal(first.float_images(slice(1, 3)), load_image_folder(folder, 8).float_images(slice(1, 3)))

    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image despite the cache")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    again = load_image_folder(folder, 8, cache_dir=str(cache))
    assert np.array_equal(again.grey, first.grey) and again.files == first.files
    monkeypatch.undo()
    # A changed file, another size, limit, crop or threshold is a different dataset: a new cache entry.
    save_image(folder / "a_wide.png", np.zeros((12, 30)))
    assert not np.array_equal(load_image_folder(folder, 8, cache_dir=cache).grey, first.grey)
    load_image_folder(folder, 4, cache_dir=cache)
    load_image_folder(folder, 8, cache_dir=cache, limit=3)
    load_image_folder(folder, 8, cache_dir=cache, crop="top_left")
    load_image_folder(folder, 8, cache_dir=cache, near_duplicate_threshold=None)
    assert len(list(cache.glob("*.npy"))) == 6 and len(list(cache.glob("*.json"))) == 6
    assert list(cache.glob("*.tmp")) == []


def test_load_image_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError, match="not found") as error:
        load_image_folder(missing, 8)
    assert str(missing) in str(error.value)

    a_file = tmp_path / "file.png"
    save_image(a_file, np.zeros((4, 4)))
    with pytest.raises(UserInputError, match="not a directory"):
        load_image_folder(a_file, 8)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(UserInputError, match="no image files") as error:
        load_image_folder(empty, 8)
    assert str(empty) in str(error.value)


def test_load_image_folder_names_every_corrupt_file(folder, tmp_path):
    corrupt = [folder / "sub" / "broken.jpg", folder / "zz_truncated.png"]
    corrupt[0].write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    corrupt[1].write_bytes((folder / "a_wide.png").read_bytes()[:40])
    with pytest.raises(UserInputError) as error:
        load_image_folder(folder, 8, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert message.startswith("2 of 6 image files") and all(str(path) in message for path in corrupt)
    assert not (tmp_path / "cache").exists()  # nothing written


def test_load_image_folder_names_a_link_to_no_file(folder, tmp_path):
    """An image the folder links to but does not hold would otherwise be left out of the pool unsaid."""
    (folder / "gone.png").symlink_to(tmp_path / "moved-away.png")
    with pytest.raises(UserInputError, match="1 link") as error:
        load_image_folder(folder, 8, cache_dir=tmp_path / "cache")
    assert str(folder / "gone.png") in str(error.value) and not (tmp_path / "cache").exists()


def test_load_image_folder_follows_linked_folders_once(folder, tmp_path):
    """A folder assembled from links (to other disks) holds their images; a link back up is no
    loop, a folder linked twice gives its images once, and a link to a folder the tree holds
    changes no image's name (nor so the pool)."""
    alone = load_image_folder(folder, 8)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / "a_wide.png").rename(outside / "moved.png")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "twice").symlink_to(outside, target_is_directory=True)
    (folder / "a_link_to_sub").symlink_to(folder / "sub", target_is_directory=True)  # sorted before it
    linked = load_image_folder(folder, 8)
    assert len(linked) == len(alone) and "linked/moved.png" in linked.files
    assert set(linked.files) - {"linked/moved.png"} == set(alone.files) - {"a_wide.png"}  # each under its own path


def test_load_image_folder_names_a_folder_it_cannot_read(folder, monkeypatch):
    """Its images would otherwise be left out of the pool unsaid (as root, permissions cannot make one)."""
    import os

    listing = os.scandir

    def scandir(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserInputError, match=r"cannot read folder .*sub: Permission denied"):
        load_image_folder(folder, 8)


# ---------------------------------------------------------------- embedded photographs


def test_photo_patches_are_deterministic_grey_tiles():
    patches = photo_patches(30, 16, seed=0)
    assert_grey_images(patches, 30, 16)
    assert torch.equal(patches, photo_patches(30, 16, seed=0))
    assert torch.equal(patches[:5], photo_patches(5, 16, seed=0))
    assert not torch.equal(patches, photo_patches(30, 16, seed=1))
    assert len(PHOTO_NAMES) == 12


def test_photo_pool_is_finite_and_overdrawing_is_an_error():
    pool = photo_pool_size(80)
    assert 100 < pool < photo_pool_size(40) < photo_pool_size(16)
    assert len(photo_patches(pool, 80)) == pool
    with pytest.raises(UserInputError) as error:
        photo_patches(pool + 1, 80)
    assert str(pool + 1) in str(error.value) and str(pool) in str(error.value)


def test_photo_pool_is_the_seed_0_order_kept_uint8():
    """Splits of the photographs index this pool: the tiles `photo_patches` gives with seed 0."""
    pool = photo_pool(40)
    assert len(pool) == photo_pool_size(40) and pool.duplicates_removed > 0
    assert pool.uint8_images().dtype == torch.uint8
    assert torch.equal(pool.float_images(), photo_patches(len(pool), 40, seed=0))


def test_photo_pool_holds_no_flat_tile_and_no_near_duplicate():
    """At 16x16 the photographs give 54 identical black tiles (the astronaut's backdrop) and hundreds
    of near-copies of one brick: kept, they would sit in split A, split B and the test set at once."""
    tiles = _all_tiles(16)
    flat = tiles.min(axis=(1, 2)) == tiles.max(axis=(1, 2))
    assert flat.sum() >= 50 and near_duplicates(torch.from_numpy(tiles)).sum() >= 100  # what is dropped
    pool = photo_pool(16)
    kept = pool.uint8_images()[:, 0]
    assert len(pool) + pool.duplicates_removed == len(tiles)
    assert (kept.flatten(1).amin(1) < kept.flatten(1).amax(1)).all()
    assert not near_duplicates(kept).any()
    assert len(np.unique(kept.flatten(1).numpy(), axis=0)) == len(pool)


def test_grid_tiles_never_share_pixels():
    image = np.arange(23 * 37).reshape(23, 37)  # every pixel distinct
    tiles = _grid_tiles(image, 5)
    assert tiles.shape == (4 * 7, 5, 5)
    values = tiles.ravel()
    assert len(np.unique(values)) == len(values)
    assert np.array_equal(tiles[0], image[1:6, 1:6])  # the grid is centred


# ---------------------------------------------------------------- registry


def test_build_pool_every_kind(folder):
    params = {"calpha": dict(alpha=2.0), "discs": dict(antialiasing=1), "folder": dict(path=folder), "photos": {}}
    assert set(params) == set(DATASET_KINDS)
    for kind in DATASET_KINDS:
        # db2's negative taps overshoot by up to ~10% of the disc's contrast at its edge
        assert_grey_images(build_pool(kind, 3, 16, seed=1, **params[kind]), 3, 16, ringing=0.12 if kind == "discs" else 0)
    assert torch.equal(build_pool("calpha", 3, 16, seed=1, alpha=2.0), calpha_images(3, 2.0, 16, seed=1))
    assert torch.equal(build_pool("discs", 3, 16, seed=1), disc_images(3, 16, seed=1)[0])
    assert torch.equal(build_pool("folder", 3, 8, seed=0, path=folder),
                       load_image_folder(folder, 8).float_images()[:3])


def test_build_pool_errors(folder):
    with pytest.raises(UserInputError, match="mnist"):
        build_pool("mnist", 3, 16, seed=0)
    with pytest.raises(UserInputError, match="gamma"):
        build_pool("calpha", 3, 16, seed=0, alpha=1.0, gamma=2.0)
    with pytest.raises(UserInputError, match="alpha"):
        build_pool("calpha", 3, 16, seed=0)
    with pytest.raises(UserInputError, match="antialiasing"):  # the bounds a study spec checks
        build_pool("discs", 3, 16, seed=0, antialiasing=9)
    with pytest.raises(UserInputError, match="path"):
        build_pool("folder", 3, 16, seed=0)
    with pytest.raises(UserInputError) as error:
        build_pool("folder", 9, 8, seed=0, path=folder)
    assert str(folder) in str(error.value) and "9" in str(error.value) and "4" in str(error.value)


def test_near_duplicates_pool_by_int_side_over_20_as_the_authors():
    """80x80 images are compared on 4x4-pooled 20x20 copies: detail that averages out within the
    4x4 blocks does not tell two images apart, however strong."""
    smooth = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(1)).repeat_interleave(4, 2)
    smooth = smooth.repeat_interleave(4, 3)
    checker = (torch.arange(80)[:, None] + torch.arange(80)[None, :]) % 2 * 2.0 - 1.0
    pair = torch.cat([smooth, smooth + 5 * checker])  # full-resolution correlation far below 0.95
    assert near_duplicates(pair).tolist() == [False, True]
    assert near_duplicates(pair[:, :, :32, :32]).tolist() == [False, False]  # 32 px: compared as they are

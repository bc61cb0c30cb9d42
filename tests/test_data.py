"""Data loading: .npz, .npy and image folders, and the checks made before any work."""

from __future__ import annotations

import numpy as np
import pytest

from tfedge.errors import DataError
from tfedge.io.data import check_fits, draw_samples, load_data


def test_npz_with_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 3), np.float32), y=np.arange(5))
    ds = load_data(tmp_path / "d.npz")
    assert ds.x.shape == (5, 3) and list(ds.y) == [0, 1, 2, 3, 4]


def test_npz_without_x_names_what_it_found(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.ones((5, 3)))
    with pytest.raises(DataError, match="no array named 'x' .found: images"):
        load_data(tmp_path / "d.npz")


def test_npy_inputs_only(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((4, 2), np.float32))
    assert load_data(tmp_path / "d.npy").y is None


def test_label_count_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 3)), y=np.arange(4))
    with pytest.raises(DataError, match="5 inputs but 4 labels"):
        load_data(tmp_path / "d.npz")


def test_unknown_suffix(tmp_path):
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown data format"):
        load_data(tmp_path / "d.csv")


@pytest.mark.tf
def test_image_folder(tmp_path):
    from tfedge._tf import import_tf

    tf = import_tf()
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            img = tf.cast(tf.fill((12, 10, 3), 40 * i + (100 if label == "dog" else 0)), tf.uint8)
            tf.io.write_file(str(tmp_path / label / f"{i}.png"), tf.io.encode_png(img))
    ds = load_data(tmp_path, image_size=(6, 5))
    assert ds.x.shape == (4, 6, 5, 3) and list(ds.y) == [0, 0, 1, 1]


def test_check_fits_accepts_unknown_dims_and_rejects_others():
    check_fits(np.zeros((2, 8, 8, 1)), (None, 8, 8, 1), "d")
    check_fits(np.zeros((2, 5, 3)), (None, None, 3), "d")
    with pytest.raises(DataError, match="channel axis"):
        check_fits(np.zeros((2, 8, 8)), (None, 8, 8, 1), "d")


def test_draw_samples_is_seeded():
    x = np.arange(100)
    assert list(draw_samples(x, 10, 7)) == list(draw_samples(x, 10, 7))
    assert list(draw_samples(x, 10, 7)) != list(draw_samples(x, 10, 8))
    assert len(draw_samples(x, 500, 0)) == 100

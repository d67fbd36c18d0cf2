import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import CATALOG, DatasetError, batches, dataset_shape, dataset_status, load_dataset
from harness.data.catalog import DEBIAN_FASHION_MNIST
from harness.data.shapes3d import FACTORS


def check_common(data, shape, n_train, n_test, factors):
    assert data.x_train.shape == (n_train, *shape) and data.x_test.shape == (n_test, *shape)
    assert data.x_train.dtype == torch.float32
    for x in (data.x_train, data.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert data.factors == factors
    for f, k in factors.items():
        all_labels = torch.cat([data.y_train[f], data.y_test[f]])
        assert sorted(all_labels.unique().tolist()) == list(range(k))


def test_digits():
    data = load_dataset("digits")  # validation_fraction 0: the sizes before the validation split existed
    check_common(data, (1, 8, 8), 1438, 359, {"digit": 10})
    assert data.x_val.shape == (0, 1, 8, 8) and data.y_val["digit"].shape == (0,)
    assert data.likelihood == "gaussian"  # 35% of pixels are mid-grey: not near-binary
    again = load_dataset("digits")
    assert torch.equal(data.x_train, again.x_train)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(data.y_test["digit"], other.y_test["digit"])


@pytest.mark.parametrize("config,varying", [(1, "floor_hue"), (2, "wall_hue")])
def test_procedural_shapes(config, varying):
    data = load_dataset(f"shapes-config{config}")
    check_common(data, (3, 32, 32), 3840, 960, {
        "floor_hue": 10 if varying == "floor_hue" else 1, "wall_hue": 10 if varying == "wall_hue" else 1,
        "object_hue": 1, "scale": 8, "shape": 4, "orientation": 15})
    assert data.likelihood == "gaussian"
    # Same seed, same bytes; another seed moves objects and changes the split.
    again = load_dataset(f"shapes-config{config}")
    assert data.x_train.numpy().tobytes() == again.x_train.numpy().tobytes()
    assert not torch.equal(data.x_train, load_dataset(f"shapes-config{config}", split_seed=3).x_train)
    # The varying hue really changes the background colour and the fixed one does not.
    x = torch.cat([data.x_train, data.x_test])
    y = {f: torch.cat([data.y_train[f], data.y_test[f]]) for f in data.factors}
    row = 28 if varying == "floor_hue" else 2  # a floor row / a wall row, away from the object
    corner = x[:, :, row, 0]
    means = torch.stack([corner[y[varying] == v].mean(0) for v in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10) * 9).min() > 0.05
    other_row = 2 if varying == "floor_hue" else 28
    assert x[:, :, other_row, 0].std(0).max() < 1e-5


def test_fashion_mnist_statistics():
    if not DEBIAN_FASHION_MNIST.exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    data = load_dataset("fashion-mnist")
    check_common(data, (1, 28, 28), 60000, 10000, {"label": 10})
    assert torch.bincount(data.y_train["label"]).tolist() == [6000] * 10
    assert torch.bincount(data.y_test["label"]).tolist() == [1000] * 10
    assert abs(float(data.x_train.mean()) - 0.2860) < 1e-3
    assert abs(float(data.x_train.std()) - 0.3530) < 1e-3


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    data = load_dataset("mnist", data_root=tmp_path)
    check_common(data, (1, 28, 28), 20, 10, {"digit": 10})


def test_missing_downloads_name_the_files(tmp_path):
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_root=tmp_path)
    with pytest.raises(DatasetError, match="train_32x32.mat"):
        load_dataset("svhn", data_root=tmp_path)
    with pytest.raises(DatasetError, match="3dshapes.h5"):
        load_dataset("3dshapes-config1", data_root=tmp_path)


def test_unknown_dataset_lists_known():
    with pytest.raises(DatasetError) as info:
        load_dataset("mnsit")
    for name in CATALOG:
        assert name in str(info.value)


def write_3dshapes_fixture(path: Path) -> None:
    """A small file with 3dshapes.h5's schema: uint8 (N,64,64,3) images, float (N,6) factor values."""
    import h5py

    values = [np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 3), np.linspace(0, 0.9, 2),
              np.linspace(0.75, 1.25, 2), np.arange(4.0), np.linspace(-30, 30, 2)]
    grid = np.stack(np.meshgrid(*values, indexing="ij"), -1).reshape(-1, 6)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(grid), 64, 64, 3), dtype=np.uint8)
    images[:, :32, :, 0] = (grid[:, 0] * 255).astype(np.uint8)[:, None, None]  # floor hue shows
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = grid


@pytest.mark.parametrize("config", [1, 2])
def test_3dshapes_fixture(tmp_path, config):
    write_3dshapes_fixture(tmp_path / "3dshapes.h5")
    data = load_dataset(f"3dshapes-config{config}", data_root=tmp_path)
    varying = {1: "floor_hue", 2: "wall_hue"}[config]
    n_varying = 10 if config == 1 else 3
    n = n_varying * 2 * 4 * 2  # the hue x scale x shape x orientation grid, other hues fixed
    assert len(data.x_train) + len(data.x_test) == n
    assert len(data.x_test) == round(0.2 * n)
    assert data.image_shape == (3, 32, 32)
    assert set(data.factors) == set(FACTORS)
    assert data.factors[varying] == n_varying and data.factors["shape"] == 4 and data.factors["object_hue"] == 1
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    # Labels stay aligned with images through selection, resizing and the split.
    if config == 1:
        top_red = data.x_train[:, 0, :16, :].mean((1, 2))
        expected = data.y_train["floor_hue"].float() * 0.1
        assert torch.allclose(top_red, expected, atol=0.01)


def test_suggested_likelihood_follows_grey_share(tmp_path):
    binary = (np.random.default_rng(0).random((20, 8, 8)) > 0.7).astype(np.float32)
    np.savez(tmp_path / "b.npz", x=binary)
    assert load_dataset(f"npz:{tmp_path / 'b.npz'}").likelihood == "bernoulli"
    np.savez(tmp_path / "g.npz", x=np.random.default_rng(0).random((20, 8, 8)))
    assert load_dataset(f"npz:{tmp_path / 'g.npz'}").likelihood == "gaussian"


def test_npz_roundtrip_and_scaling(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y_colour=np.arange(50) % 5)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.image_shape == (3, 12, 12) and len(data.x_train) == 40 and len(data.x_test) == 10
    assert data.factors == {"colour": 5}
    np.testing.assert_allclose(data.x_train.max().item(), x.max() / 255, rtol=1e-6)
    np.savez(tmp_path / "f.npz", x=rng.normal(size=(30, 16)) * 7 + 3)
    flat = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert flat.image_shape == (1, 4, 4)
    both = torch.cat([flat.x_train, flat.x_test])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0


@pytest.mark.parametrize("arrays,message", [
    ({"images": np.zeros((4, 8, 8))}, "has no array 'x'"),
    ({"x": np.full((4, 8, 8), np.nan)}, "NaN or inf"),
    ({"x": np.zeros((4, 8, 8)), "y_digit": np.arange(3)}, "'y_digit'.*expected shape \\(4,\\)"),
    ({"x": np.zeros((4, 2, 2, 2, 2))}, "expected rank"),
    ({"x": np.zeros((4, 10))}, "square number"),
    ({"x": np.zeros((4, 8, 8)), "y_digit": np.array([0.5, 1, 2, 3])}, "must be integers"),
    ({"x": np.zeros((4, 8, 8)), "y_a": np.arange(4), "x_test": np.zeros((2, 8, 8))}, "y_test_a"),
])
def test_npz_validation(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_batches_cover_every_sample_once():
    x = torch.arange(103).float()[:, None]
    seen = torch.cat(list(batches(x, 10, torch.Generator().manual_seed(0))))
    assert sorted(seen[:, 0].long().tolist()) == list(range(103))
    again = torch.cat(list(batches(x, 10, torch.Generator().manual_seed(0))))
    assert torch.equal(seen, again)


def test_dataset_status_lists_every_dataset():
    rows = dataset_status()
    assert [name for name, _, _ in rows] == list(CATALOG)
    status = dict((name, ok) for name, ok, _ in rows)
    assert status["digits"] and status["shapes-config1"] and not status["svhn"]


def test_cli_datasets_list_and_show(tmp_path, capsys):
    from harness.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "available" in out and "npz:PATH" in out
    assert "svhn" in out and "get it:" in out  # missing ones say how to get them
    png = tmp_path / "grid.png"
    assert main(["datasets", "show", "shapes-config2", "--factor", "wall_hue", "--out", str(png)]) == 0
    assert png.stat().st_size > 10000
    assert main(["datasets", "show", "mnsit", "--out", str(png)]) == 2
    assert "known: digits" in capsys.readouterr().err


def unique_images(path: Path, n: int = 80, test: int = 0) -> dict[bytes, int]:
    """An npz of `n` images that differ from each other (with `test` more as x_test); returns each
    image's bytes -> its row in x (x_test rows counted on from n), to tell which image went where."""
    x = np.random.default_rng(0).random((n + test, 1, 4, 4)).astype(np.float32)
    labels_ = np.arange(n + test) % 4
    arrays = {"x": x[:n], "y_colour": labels_[:n]}
    if test:
        arrays.update(x_test=x[n:], y_test_colour=labels_[n:])
    np.savez(path, **arrays)
    return {row.tobytes(): i for i, row in enumerate(x)}


def rows(index: dict[bytes, int], x: torch.Tensor) -> list[int]:
    return [index[row.tobytes()] for row in x.numpy()]


def test_validation_split_is_carved_from_training_disjoint_and_ordered(tmp_path):
    index = unique_images(tmp_path / "u.npz", n=80, test=20)
    name = f"npz:{tmp_path / 'u.npz'}"
    whole = load_dataset(name, validation_fraction=0)
    data = load_dataset(name, validation_fraction=0.25)
    train, val, test = rows(index, data.x_train), rows(index, data.x_val), rows(index, data.x_test)
    assert (len(train), len(val), len(test)) == (60, 20, 20)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert sorted(train + val) == rows(index, whole.x_train) == list(range(80))  # carved from training only
    assert test == rows(index, whole.x_test)  # the test set is untouched
    assert train == sorted(train) and val == sorted(val)  # each split keeps the images' stored order
    assert data.y_val["colour"].tolist() == [i % 4 for i in val]  # labels follow their images
    assert data.y_train["colour"].tolist() == [i % 4 for i in train]
    assert "60 train / 20 validation / 20 test" in data.describe()
    assert torch.equal(data.to("cpu").x_val, data.x_val)


def test_validation_split_depends_on_split_seed_only(tmp_path):
    index = unique_images(tmp_path / "u.npz", n=200)
    name = f"npz:{tmp_path / 'u.npz'}"
    val = rows(index, load_dataset(name, split_seed=0, validation_fraction=0.1).x_val)
    np.random.seed(1), torch.manual_seed(1)  # a model seed's global RNG state changes nothing
    assert rows(index, load_dataset(name, split_seed=0, validation_fraction=0.1).x_val) == val
    np.random.seed(2), torch.manual_seed(2)
    assert rows(index, load_dataset(name, split_seed=0, validation_fraction=0.1).x_val) == val
    other = rows(index, load_dataset(name, split_seed=1, validation_fraction=0.1).x_val)
    assert other != val and len(other) == len(val) == 16  # 160 training images after the 80/20 split


def test_catalogue_knows_the_split_sizes_without_loading():
    shape = dataset_shape("digits").with_validation(0.1)
    data = load_dataset("digits", validation_fraction=0.1)
    assert (shape.n_train, shape.n_val, shape.n_test) == (len(data.x_train), len(data.x_val), len(data.x_test)) \
        == (1294, 144, 359)
    assert "1294 train / 144 validation / 359 test" in shape.describe() == data.describe()


@pytest.mark.parametrize("fraction,message", [
    (-0.1, "must be in [0, 1)"),
    (1.0, "must be in [0, 1)"),
    (0.01, "leaves 1 validation and 79 training images"),  # 0.8 validation images round to 1
])
def test_bad_validation_fraction_refused(tmp_path, fraction, message):
    unique_images(tmp_path / "u.npz", n=100)
    with pytest.raises(DatasetError) as info:
        load_dataset(f"npz:{tmp_path / 'u.npz'}", validation_fraction=fraction)
    assert "dataset.validation_fraction" in str(info.value) and message in str(info.value)


def test_train_images_keeps_a_subset_fixed_by_the_split_seed():
    whole = load_dataset("digits", validation_fraction=0.1)
    small = load_dataset("digits", validation_fraction=0.1, train_images=300)
    assert len(small.x_train) + len(small.x_val) == 300 and len(small.x_val) == 30
    assert torch.equal(small.x_test, whole.x_test)  # the test set stays whole
    rows = {row.numpy().tobytes() for row in load_dataset("digits").x_train}
    assert all(row.numpy().tobytes() in rows for row in torch.cat([small.x_train, small.x_val]))
    again = load_dataset("digits", validation_fraction=0.1, train_images=300)
    assert torch.equal(small.x_train, again.x_train) and torch.equal(small.y_train["digit"], again.y_train["digit"])
    other = load_dataset("digits", validation_fraction=0.1, train_images=300, split_seed=1)
    assert not torch.equal(small.x_train[:50], other.x_train[:50])
    with pytest.raises(DatasetError, match=r"dataset.train_images: 5000 for digits's 1438 training images; allowed 2..1438"):
        load_dataset("digits", train_images=5000)

"""`mnist-mini`: the MNIST subset inside the package loads with no data folder, is named explicitly, equals the
first MNIST images, and trains with MNIST's presets."""
import pytest
import torch

from spikingjelly_vae.data import DATASETS, EMBEDDED, load_dataset
from spikingjelly_vae.presets import get_preset

from conftest import SHARED_DATA


@pytest.fixture
def no_data_root(tmp_path, monkeypatch):
    """A working folder without ./data and no SJVAE_DATA: only the package itself has data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SJVAE_DATA", raising=False)


def test_loads_without_a_data_root(no_data_root):
    train, test = load_dataset("mnist-mini", "train"), load_dataset("mnist-mini", "test")
    assert (len(train), len(test)) == (10000, 2000) == (10000, DATASETS["mnist-mini"].test_size)
    x, y = test[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert -1.0 <= x.min() < 0 < x.max() <= 1.0
    labels = torch.tensor([train[i][1] for i in range(0, 10000, 10)])
    assert set(labels.tolist()) == set(range(10))  # every digit is there
    assert EMBEDDED["mnist-mini"].stat().st_size < 3_000_000  # a few MB at most


def test_mnist_is_never_silently_replaced(no_data_root):
    with pytest.raises(ValueError, match="data root"):
        load_dataset("mnist", "test")


def test_download_has_nothing_to_fetch(no_data_root, tmp_path):
    from spikingjelly_vae.download import download_dataset
    said = []
    download_dataset("mnist-mini", tmp_path / "data", log=said.append)
    assert "ships inside the package" in said[0] and not (tmp_path / "data").exists()


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").is_dir(), reason="shared MNIST not found")
def test_equals_the_first_mnist_images():
    for split, n in (("train", 10000), ("test", 2000)):
        mini, full = load_dataset("mnist-mini", split), load_dataset("mnist", split, root=SHARED_DATA)
        for i in list(range(0, n, 397)) + [n - 1]:
            assert torch.equal(mini[i][0], full[i][0]) and mini[i][1] == full[i][1], (split, i)


def test_presets_are_mnists():
    for model in ("esvae", "fsvae", "ann-vae"):
        assert get_preset(model, "mnist-mini") == get_preset(model, "mnist")


def test_shipped_files_are_package_data():
    """The embedded data and every loadable weights file match a package-data pattern of pyproject.toml, so a
    wheel (not only an editable install) carries them."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")
    from spikingjelly_vae.registry import WEIGHTS, WEIGHTS_DIR
    package = WEIGHTS_DIR.parent
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["spikingjelly_vae"]
    shipped = [*EMBEDDED.values(), *(e.path() for e in WEIGHTS.values() if e.file)]
    assert len(shipped) >= 2
    for path in shipped:
        relative = path.relative_to(package).as_posix()
        assert path.is_file() and any(fnmatch.fnmatch(relative, p) for p in patterns), relative

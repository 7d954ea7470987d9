"""A plant's own data: NPZ, CSV and image folders, a registered dataset, and their errors."""

import numpy as np
import pytest
from PIL import Image

from fedhq_sim.cli import main
from fedhq_sim.datasets import DATASETS, read_csv, read_image_folder, read_npz, register_dataset
from fedhq_sim.errors import InputError
from fedhq_sim.scenario import load_scenario
from tests.conftest import tiny_scenario_dict


def _npz(path, x=None, y=None, **arrays):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3, 32)).astype(np.float32) if x is None else x
    y = np.arange(len(x)) % 4 if y is None else y
    np.savez(path, x=x, y=y, **arrays)
    return path


def test_an_npz_file_gives_its_samples_kind_and_classes(tmp_path):
    data = read_npz(_npz(tmp_path / "v.npz"))
    assert data.input_shape == (3, 32) and data.kind == "sequence" and data.classes == ("0", "1", "2", "3")
    assert len(data.samples) == 120 and data.samples.y.dtype.is_floating_point is False
    named = read_npz(
        _npz(tmp_path / "w.npz", windows=np.zeros((8, 5)), labels=np.arange(8) % 2), x_key="windows", y_key="labels"
    )
    assert named.input_shape == (5,) and named.kind == "tabular"


@pytest.mark.parametrize(
    ("arrays", "key", "fragment"),
    [
        ({"y": np.arange(120) % 4 + 0.5}, "y", "labels must be integers 0..K-1, got float64"),
        ({"y": np.arange(120) % 4 * 2}, "y", "class 1 has no samples"),
        ({"y": np.zeros(120, dtype=int)}, "y", "at least two classes"),
        ({"y": np.arange(119) % 4}, "y", "one label per sample (120)"),
        ({"y": np.arange(120) % 4 - 1}, "y", "got -1"),
        ({"x": np.full((120, 4), np.nan)}, "x", "480 values are NaN, infinite or beyond float32"),
        ({"x": np.full((120, 4), 1e300)}, "x", "480 values are NaN, infinite or beyond float32"),
        ({"y": np.full(120, 10**11)}, "y", "got a label 100000000000"),
        ({"x": np.array(["a"] * 120)}, "x", "expected an array of samples"),
        ({"x": np.array([["a", "b"]] * 120)}, "x", "expected numbers"),
    ],
)
def test_a_wrong_npz_is_one_error_naming_the_file_and_array(tmp_path, arrays, key, fragment):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as caught:
        read_npz(path)
    assert caught.value.file == str(path) and caught.value.key_path == key and fragment in caught.value.problem


def test_a_label_column_cannot_also_be_a_feature(tmp_path):
    path = _csv(tmp_path / "r.csv", "a,label\n1,x\n2,y\n")
    with pytest.raises(InputError, match="is the label column"):
        read_csv(path, label="label", features=["a", "label"])


def test_a_corrupt_or_incomplete_npz_is_refused(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"not a readable \.npz file"):
        read_npz(broken)
    np.savez(tmp_path / "only_x.npz", x=np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"no such array \(the file has: x\)"):
        read_npz(tmp_path / "only_x.npz")
    np.save(tmp_path / "single.npy", np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"a single \.npy array"):
        read_npz(tmp_path / "single.npy")


def _csv(path, text):
    path.write_text(text)
    return path


def test_a_csv_file_with_named_classes_is_read_and_standardized(tmp_path):
    rows = "\n".join(f"{i},{2 * i + 1},{'ok' if i % 3 else 'worn'}" for i in range(30))
    data = read_csv(_csv(tmp_path / "r.csv", f"temp,current,state\n{rows}\n"), label="state")
    assert data.classes == ("ok", "worn") and data.input_shape == (2,) and data.kind == "tabular"
    assert abs(float(data.samples.x.mean())) < 1e-5 and abs(float(data.samples.x.std(unbiased=False)) - 1) < 1e-4
    assert int(data.samples.y.sum()) == 10  # 'worn' (class 1): the rows with i % 3 == 0
    picked = read_csv(tmp_path / "r.csv", label="state", features=["current"], standardize=False)
    assert picked.input_shape == (1,) and float(picked.samples.x[3, 0]) == 7.0


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("a,b,label\n1,2,x\n3,oops,y\n", "row 3, column 'b'", "expected a number, got 'oops'"),
        ("a,b,label\n1,2,x\n3,4\n", "row 3", "expected 3 cells, got 2"),
        ("a,b\n1,2\n", "column 'label'", "no such label column (columns: a, b)"),
        ("a,b,label\n", "", "at least one row of samples"),
        ("a,b,label\n1,2,x\n3,4,x\n", "column 'label'", "at least two classes"),
        ("a,b,label\n1,2,0\n3,4,2\n", "column 'label'", "got a label 2"),
        ("a,b,label\n1,2,x\n3,4,\n", "row 3, column 'label'", "the label is empty"),
        ("a,b,label\n1,nan,x\n3,4,y\n", "row 2, column 'b'", "NaN or infinite"),
        ("a,b,label\n1,2,-1\n3,4,01\n5,6,x\n", None, "no error: labels that only look like integers are names"),
    ],
)
def test_a_wrong_csv_is_one_error_naming_the_file_row_and_column(tmp_path, text, key, fragment):
    path = _csv(tmp_path / "bad.csv", text)
    if key is None:
        assert read_csv(path, label="label").classes == ("-1", "01", "x")
        return
    with pytest.raises(InputError) as caught:
        read_csv(path, label="label")
    assert caught.value.file == str(path) and caught.value.key_path == key and fragment in caught.value.problem


def _images(root, classes=("good", "scratch"), per_class=3, size=(12, 10)):
    rng = np.random.default_rng(1)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_an_image_folder_gives_one_class_per_sub_folder_scaled_to_the_size(tmp_path):
    root = _images(tmp_path / "imgs")
    (root / "good" / "notes.txt").write_text("not an image: ignored")
    data = read_image_folder(root, size=(8, 8), channels=3)
    assert data.classes == ("good", "scratch") and data.input_shape == (3, 8, 8) and data.kind == "image"
    assert float(data.samples.x.min()) >= 0 and float(data.samples.x.max()) <= 1
    grey = read_image_folder(root, channels=1)
    assert grey.input_shape == (1, 12, 10)


def test_a_broken_image_folder_names_the_image_or_folder(tmp_path):
    root = _images(tmp_path / "imgs")
    (root / "good" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError) as caught:
        read_image_folder(root)
    assert caught.value.file == str(root / "good" / "9.png") and "not a readable PNG/JPEG image" in caught.value.problem
    (root / "good" / "9.png").unlink()
    (root / "dent").mkdir()
    with pytest.raises(InputError) as caught:
        read_image_folder(root)
    assert caught.value.file == str(root / "dent") and "holds no PNG or JPEG images" in caught.value.problem
    with pytest.raises(InputError, match="at least two"):
        read_image_folder(_images(tmp_path / "one", classes=("good",)))
    (root / "dent" / "deep.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.full((12, 10), 40000, dtype=np.uint16)).save(root / "dent" / "deep.png")
    with pytest.raises(InputError, match="16-bit or float"):
        read_image_folder(root)


def test_a_scenario_runs_validation_on_an_npz_file_and_refuses_a_broken_one(write_scenario, tmp_path, capsys):
    rng = np.random.default_rng(0)
    _npz(tmp_path / "digits.npz", x=rng.random((200, 1, 8, 8)).astype(np.float32), y=np.arange(200) % 5)
    data = tiny_scenario_dict()
    data["data"] = {"dataset": {"format": "npz", "path": "digits.npz"}, "dirichlet_alpha": 1.0}
    path = write_scenario(data)
    scenario = load_scenario(path)
    assert scenario.data_source.format == "npz"
    assert main(["validate", str(path)]) == 0
    _npz(tmp_path / "digits.npz", x=rng.random((200, 1, 8, 8)), y=np.arange(200) % 5 * 1.0)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {tmp_path / 'digits.npz'}: y: labels must be integers 0..K-1, got float64 values"


@pytest.mark.parametrize(
    ("dataset", "fragment"),
    [
        ({"format": "npz"}, "data.dataset: a npz dataset needs the path of its file"),
        ({"format": "csv", "path": "x.csv"}, "data.dataset: a csv dataset needs its label column"),
        ({"format": "npz", "path": "x.npz", "label": "y"}, "'label' is an option of csv files, not of npz files"),
        ({"format": "npz", "path": "missing.npz"}, "data.dataset.path: no such file or folder: missing.npz"),
        ({"format": "parquet", "path": "x"}, "data.dataset.format: Input should be 'npz', 'csv' or 'image_folder'"),
        ("no_such_data", "data.dataset: unknown dataset 'no_such_data' (registered: digits, plaid, plant_sensors"),
    ],
)
def test_a_wrong_dataset_entry_is_one_line_naming_its_key(write_scenario, capsys, dataset, fragment):
    data = tiny_scenario_dict()
    data["data"] = {"dataset": dataset, "dirichlet_alpha": 1.0}
    path = write_scenario(data)
    (path.parent / "x.npz").write_bytes(b"")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err, err


def test_a_registered_dataset_from_the_users_module(write_scenario, tmp_path):
    (tmp_path / "mine.py").write_text(
        "import numpy as np\nfrom fedhq_sim.datasets import register_dataset\n\n"
        "@register_dataset('test_blobs', kind='tabular')\n"
        "def blobs(n=50):\n"
        "    rng = np.random.default_rng(0)\n"
        "    y = np.arange(n) % 3\n"
        "    return rng.normal(size=(n, 4)) + y[:, None], y\n"
    )
    data = tiny_scenario_dict()
    data["model"] = "mlp"
    data["data"] = {"module": "mine.py", "dataset": "test_blobs", "args": {"n": 240}, "dirichlet_alpha": 1.0}
    try:
        scenario = load_scenario(write_scenario(data))
        from fedhq_sim.workload import load_data

        loaded = load_data(scenario.data_source)
        assert len(loaded.samples) == 240 and loaded.input_shape == (4,) and loaded.kind == "tabular"
    finally:
        DATASETS.pop("test_blobs", None)


def test_a_dataset_name_cannot_be_registered_twice():
    @register_dataset("test_twice", kind="image")
    def first():
        return np.zeros((2, 1, 2, 2)), np.array([0, 1])

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("test_twice", kind="image")(lambda: None)
    finally:
        DATASETS.pop("test_twice")

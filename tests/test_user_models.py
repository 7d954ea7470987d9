"""A plant's own model: one registry, a file or module named in the scenario, clear errors."""

import datetime
import multiprocessing
import pickle
import textwrap

import pytest
import torch

from fedhq_sim.cli import main
from fedhq_sim.models import MODELS, build_model, model_ref, read_user_code, register_model
from fedhq_sim.models.registry import model_factory
from fedhq_sim.scenario import load_scenario
from tests.conftest import tiny_scenario_dict

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes, width=8):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return self.fc((y + y.mean()).mean(dim=(2, 3)))


    def build(num_classes, input_shape, width=8):
        assert input_shape == (1, 8, 8), input_shape
        return Net(num_classes, width)
    """
)


def test_built_in_models_are_registered_by_name():
    assert {"small_cnn", "resnet8", "mlp"} <= set(MODELS)
    assert sum(p.numel() for p in build_model("mlp", 6, seed=0, input_shape=(16,)).parameters()) > 0


def test_a_registered_model_is_found_and_a_duplicate_name_refused():
    @register_model("test_tiny_linear")
    def tiny(num_classes: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)
        )

    try:
        model = build_model("test_tiny_linear", 3, seed=0, input_shape=(2, 2))
        assert model(torch.zeros(5, 2, 2)).shape == (5, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_model("test_tiny_linear")(lambda **_: None)
    finally:
        del MODELS["test_tiny_linear"]
    with pytest.raises(LookupError, match=r"registered: .*resnet8"):
        model_factory(model_ref("test_tiny_linear"))


def test_the_same_seed_builds_the_same_weights_and_leaves_the_global_generator_alone():
    before = torch.random.get_rng_state()
    one, two = build_model("resnet8", 10, seed=5), build_model("resnet8", 10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True))


def _build_in_fresh_process(ref, queue):
    model = build_model(ref, 4, seed=1, input_shape=(1, 8, 8))
    queue.put((type(model).__name__, sum(p.numel() for p in model.parameters())))


def test_a_user_file_is_built_with_its_arguments_in_any_process_even_once_the_file_is_gone(tmp_path):
    (tmp_path / "net.py").write_text(MODEL_FILE)
    ref = model_ref(factory="build", code=read_user_code("net.py", tmp_path / "s.yaml"), args={"width": 4})
    assert ref.label == 'net.py:build{"width": 4}'
    model = build_model(ref, 4, seed=1, input_shape=(1, 8, 8))
    assert model.conv.out_channels == 4
    (tmp_path / "net.py").unlink()  # the reference carries the file's text
    assert pickle.loads(pickle.dumps(ref)) == ref
    context = multiprocessing.get_context("spawn")  # what the process pool uses
    queue = context.Queue()
    process = context.Process(target=_build_in_fresh_process, args=(ref, queue))
    process.start()
    process.join(60)
    assert queue.get(timeout=5) == ("Net", sum(p.numel() for p in model.parameters()))


def _scenario_with_model(write_scenario, tmp_path, model, text=MODEL_FILE):
    (tmp_path / "net.py").write_text(text)
    data = tiny_scenario_dict()
    data["model"] = model
    return write_scenario(data)


def test_a_scenario_names_a_user_model_file_and_it_is_checked_on_the_data(write_scenario, tmp_path):
    path = _scenario_with_model(write_scenario, tmp_path, {"module": "net.py", "factory": "Net", "args": {"width": 6}})
    scenario = load_scenario(path)
    assert scenario.model.factory == "Net" and scenario.model.args == {"width": 6}
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        ({"module": "missing.py", "factory": "build"}, MODEL_FILE, "model.module: no such file: missing.py"),
        ({"module": "net.py", "factory": "nothing"}, MODEL_FILE, "defines no function or class 'nothing'"),
        ({"module": "net.py", "factory": "build"}, "import not_a_module\n", "importing 'net.py' failed"),
        ({"module": "net.py", "factory": "build", "args": {"depth": 3}}, MODEL_FILE, "unexpected keyword"),
        ({"name": "no_such_model"}, MODEL_FILE, "model: unknown model 'no_such_model' (registered:"),
        (
            {"module": "net.py", "factory": "Net", "args": {"when": datetime.date(2024, 1, 1)}},
            MODEL_FILE,
            "model.args: expected plain numbers",
        ),
        ({"factory": "build"}, MODEL_FILE, "a factory needs the module"),
        ("no_such_model", MODEL_FILE, "unknown model 'no_such_model' (registered: cnn1d, mlp, resnet8, small_cnn"),
        (
            {"module": "net.py", "factory": "Net"},
            MODEL_FILE.replace("self.fc = nn.Linear(width, num_classes)", "self.fc = nn.Linear(width, 3)"),
            "gives outputs (2, 3); the data has 10 classes",
        ),
        (
            {"module": "net.py", "factory": "Net"},
            MODEL_FILE.replace("nn.Conv2d(1, width", "nn.Conv2d(3, width"),
            "cannot take image inputs of shape (1, 8, 8): RuntimeError",
        ),
    ],
)
def test_a_broken_model_is_one_line_naming_the_model_key(write_scenario, tmp_path, capsys, model, text, expected):
    path = _scenario_with_model(write_scenario, tmp_path, model, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: model") and expected in err
    assert "\n" not in err and "Traceback" not in err


def test_a_model_without_conv_or_linear_layers_cannot_be_quantized(write_scenario, tmp_path, capsys):
    text = "import torch\n\ndef build(num_classes):\n    return torch.nn.Flatten()\n"
    path = _scenario_with_model(write_scenario, tmp_path, {"module": "net.py", "factory": "build"}, text)
    assert main(["validate", str(path)]) == 2
    assert "gives outputs" in capsys.readouterr().err


def test_a_run_says_which_model_and_data_it_used_and_a_stand_in_says_so(write_scenario, tmp_path):
    import json

    own = _scenario_with_model(write_scenario, tmp_path, {"module": "net.py", "factory": "Net"})
    assert main(["run", str(own), "--out", str(tmp_path / "own"), "--quiet", "--workers", "1"]) == 0
    workload = json.loads((tmp_path / "own" / "run.json").read_text())["workload"]
    assert workload["model"] == "net.py:Net" and workload["data"] == "digits" and "note" not in workload
    assert workload["input_shape"] == [1, 8, 8] and workload["quantized_layers"] == 2
    stand_in = write_scenario(tiny_scenario_dict(), "stand_in.yaml")
    assert main(["run", str(stand_in), "--out", str(tmp_path / "toy"), "--quiet", "--workers", "1"]) == 0
    report = (tmp_path / "toy" / "report.html").read_text()
    assert "small built-in stand-ins (6,090 parameters)" in report
    assert "small built-in stand-ins" not in (tmp_path / "own" / "report.html").read_text()


DROPOUT_FILE = MODEL_FILE.replace(
    "self.fc = nn.Linear(width, num_classes)", "self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(width, num_classes))"
)


def _local_work_in_fresh_process(ref, queue):
    from fedhq_sim.quant.payload import encode_fp32
    from fedhq_sim.quant.strategy import Strategy
    from fedhq_sim.training import LocalConfig, local_work

    torch.set_num_threads(1)  # as the engine and its workers run client work (executors.on_one_thread)
    torch.manual_seed(1234)  # whatever the process's generator holds, the result must not depend on it
    x = torch.linspace(0, 1, 32 * 64).reshape(32, 1, 8, 8)
    from fedhq_sim.data import Samples

    data = Samples(x, torch.arange(32) % 4)
    cfg = LocalConfig(ref, 4, 1, 8, 0.1, 8, (1, 8, 8))
    payload = encode_fp32(build_model(ref, 4, seed=0, input_shape=(1, 8, 8)).state_dict())
    result = local_work(payload, data, Strategy("qat", 8), cfg, seed=5)
    queue.put((result.train_loss, result.payload, result.work.counts))


def test_a_model_with_dropout_and_module_level_tensors_gives_the_same_work_in_any_process(tmp_path):
    """Dropout draws from a generator seeded per client and round; the user's module runs
    untraced, so a worker's first build traces what the main process's does."""
    (tmp_path / "net.py").write_text("import torch\nSCALE = torch.linspace(0, 1, 16) * 2\n" + DROPOUT_FILE)
    ref = model_ref(factory="build", code=read_user_code("net.py", tmp_path / "s.yaml"))
    context = multiprocessing.get_context("spawn")
    outcomes = []
    for _ in range(2):
        queue = context.Queue()
        process = context.Process(target=_local_work_in_fresh_process, args=(ref, queue))
        process.start()
        outcomes.append(queue.get(timeout=120))
        process.join(60)
    here, threads = multiprocessing.Queue(), torch.get_num_threads()
    try:
        _local_work_in_fresh_process(ref, here)
    finally:
        torch.set_num_threads(threads)
    outcomes.append(here.get(timeout=5))
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_model_that_breaks_under_quantization_is_refused_before_any_round(write_scenario, tmp_path, capsys):
    text = (
        MODEL_FILE + "\n\nclass Odd(Net):\n    def __deepcopy__(self, memo):\n        raise RuntimeError('no copies')\n"
    )
    path = _scenario_with_model(write_scenario, tmp_path, {"module": "net.py", "factory": "Odd"}, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model: net.py:Odd cannot train under QAT: RuntimeError: no copies" in err and "\n" not in err

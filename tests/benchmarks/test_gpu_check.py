"""benchmarks/gpu_check.py in its dry run (tiny shapes, the Pallas interpreter): the table it prints has every
part's row with the stated columns, the kernels' errors are measured against the float32 reference, and a
part that cannot run here (cuDNN on a CPU) reports its error in its row while the rest still runs."""

import importlib.util
import math
import pathlib
import sys

import jax
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"

pytestmark = [
    pytest.mark.slow,  # one dry run: compiling its training step and sampling loop is most of it
    pytest.mark.xdist_group("gpu_check"),  # so that the module's one dry run is shared, not run on both workers
]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    """(module, returned cells, printed lines) of one dry run."""
    import contextlib
    import io

    module = _load()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cells = module.main(["--dry-run"])
    return module, cells, out.getvalue().splitlines()


def test_the_printed_table_has_every_row_and_column(run):
    module, cells, lines = run
    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == list(module.COLUMNS)
    assert set(table[1].strip("|").split("|")) == {"---"}
    body = table[2:]
    assert len(body) == len(cells) == 8  # 3 impls x (fwd, fwd+bwd), the training step, the sampling loop
    for line, row in zip(body, cells):
        assert line == module.format_row(row)
        assert len(line.strip("|").split(" | ")) == len(module.COLUMNS)
    parts = [(row["part"], row["impl"]) for row in cells]
    assert parts[:6] == [
        (part, impl)
        for part in ("attention fwd", "attention fwd+bwd (dQ err)")
        for impl in ("pallas_gpu", "cudnn", "xla")
    ]
    assert parts[6][0].startswith("train step") and parts[7][0].startswith("sampling loop")


def test_kernels_agree_with_the_float32_reference(run):
    _, cells, _ = run
    for row in cells:
        if row["impl"] in ("pallas_gpu", "xla"):
            assert row["status"] == "ok", row
            # bfloat16 inputs and outputs: a few units in the last place of bf16 (2^-8) at most
            assert 0.0 < float(row["max abs err"]) < 2e-2, row
            assert float(row["mean abs err"]) <= float(row["max abs err"])
            assert float(row["median ms"]) > 0


def test_a_failing_part_reports_in_its_row_and_the_rest_runs(run):
    _, cells, _ = run
    cudnn = [row for row in cells if row["impl"] == "cudnn"]
    if jax.default_backend() == "cpu":
        assert all(row["status"].startswith("error: ") and row["median ms"] == "" for row in cudnn)
    train, sample = cells[6], cells[7]
    assert train["status"].startswith("ok, loss ") and math.isfinite(float(train["status"].split()[-1]))
    assert float(train["rate"].split()[0].replace(",", "")) > 0
    assert sample["status"] == "ok" and sample["rate"].endswith("ms/step")


def test_peak_table_and_bad_parts():
    module = _load()
    assert module.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert module.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert module.peak_flops("NVIDIA H200") == 989e12
    assert module.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert module.peak_flops("cpu") is None
    with pytest.raises(SystemExit):
        module.main(["--dry-run", "--parts", "attention,warp"])

"""Fast unit tests for the pure parts of ``benchmarks/`` (no model, no server; < 15 s)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report
from benchmarks.flops import count_flops
from benchmarks.loadgen import check_loopback, poisson_schedule
from benchmarks.lock import BenchmarkLocked, exclusive
from benchmarks.presets import PRESETS
from benchmarks.stats import percentile, ratio, summarize
from server.config import BatchingConfig

# ----------------------------------------------------------------------------- stats


def test_percentile_linear_interpolation_matches_numpy():
    xs = [0.3, 0.1, 0.4, 0.2, 1.0, 0.25, 0.7]
    for q in (0, 1, 25, 50, 90, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q), abs=1e-12)
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(range(1, 101), 95) == pytest.approx(95.05)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_fields():
    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert s["n"] == 4
    assert (s["min"], s["median"], s["max"], s["mean"]) == (1.0, 2.5, 4.0, 2.5)
    assert s["p50"] == 2.5
    assert s["p95"] == pytest.approx(3.85)
    assert s["p99"] == pytest.approx(3.97)
    assert s["stdev"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["median"])
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None


# ----------------------------------------------------------------------------- FLOPs


def _graph():
    """x (batch, 3, 8, 8) -> Conv 4x3x3x3 pad 1 -> Flatten -> MatMul (256, 10) -> Gemm (10, 5)+b."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "m"),
        numpy_helper.from_array(rng.standard_normal((10, 5)).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal((5,)).astype(np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], axis=1, name="flat"),
        helper.make_node("MatMul", ["f", "m"], ["mm"], name="matmul"),
        helper.make_node("Gemm", ["mm", "g", "gb"], ["y"], name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_flops_of_hand_built_graph():
    model = _graph()
    r = count_flops(model, {"x": [2, 3, 8, 8]})
    conv = 2 * (2 * 4 * 8 * 8) * 3 * 3 * 3  # 2 x output elements x C_in x kernel
    matmul = 2 * (2 * 10) * 256
    gemm = 2 * (2 * 5) * 10 + 2 * 5  # + bias adds
    assert r.by_op == {"Conv": conv, "MatMul": matmul, "Gemm": gemm}
    assert r.total == conv + matmul + gemm == 38098
    assert r.nodes == 3 and r.unresolved == []
    # the batch scales everything linearly; the input model is not modified
    assert count_flops(model, {"x": [1, 3, 8, 8]}).total * 2 == r.total
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    d = r.as_dict()
    assert d["total_flops"] == r.total and d["gflops"] == pytest.approx(r.total / 1e9)


def test_flops_from_a_file(tmp_path):
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(_graph(), str(path))
    assert count_flops(path, {"x": [3, 3, 8, 8]}).total == 38098 // 2 * 3


def test_flops_are_counted_in_a_phase_process(tmp_path):
    # the runner counts in a subprocess (shape inference on a full UNet holds GBs); a component
    # that cannot be counted is named, the others still are
    import json
    import subprocess
    import sys

    import onnx

    (tmp_path / "net").mkdir()
    onnx.save(_graph(), str(tmp_path / "net" / "model.onnx"))
    wanted = {"r@8x8": {"net": {"x": [2, 3, 8, 8]}, "missing": {"x": [1]}}}
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(
        json.dumps({"kind": "flops", "args": {"folder": str(tmp_path), "shapes": wanted}})
    )
    subprocess.run(
        [sys.executable, "-m", "benchmarks.phase", str(src), str(dst)],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    out = json.loads(dst.read_text())
    assert out["ok"] and out["by_recipe"]["r@8x8"]["net"]["total_flops"] == 38098 // 2 * 2
    assert list(out["by_recipe"]["r@8x8"]) == ["net"]
    assert len(out["errors"]) == 1 and out["errors"][0].startswith("missing at r@8x8")


# ----------------------------------------------------------------------------- lock


def test_lock_refuses_a_second_run(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive(lock, preset="cpu"):
        with pytest.raises(BenchmarkLocked) as err:
            with exclusive(lock, preset="ci"):
                pass
        msg = str(err.value)
        assert "already running" in msg and "preset cpu" in msg and str(lock) in msg
    with exclusive(lock, preset="ci"):  # released: the next run may go
        pass


# ----------------------------------------------------------------------------- load generator


def test_poisson_schedule_is_seeded_and_has_the_rate():
    a = poisson_schedule(5.0, 2000, seed=1)
    assert a == poisson_schedule(5.0, 2000, seed=1)
    assert all(y > x for x, y in zip(a, a[1:], strict=False))
    assert 2000 / a[-1] == pytest.approx(5.0, rel=0.08)
    with pytest.raises(ValueError):
        poisson_schedule(0, 3)


def test_load_generator_targets_loopback_only():
    check_loopback("http://127.0.0.1:8123")
    for url in ("http://example.com", "http://0.0.0.0:80", "http://10.0.0.1:8000"):
        with pytest.raises(ValueError):
            check_loopback(url)


# ----------------------------------------------------------------------------- report


def _lat(median: float) -> dict:
    return summarize([median * 0.9, median, median * 1.2])


def _inproc(impl: str, label: str, median: float) -> dict:
    return {
        "impl": impl,
        "label": label,
        "device_class": "cpu",
        "variant": {},
        "width": 64,
        "height": 64,
        "steps": 10,
        "latency_s": _lat(median),
        "per_step_s": _lat(median / 10),
        "unet_call_s": _lat(median / 20),
        "unet_calls_per_image": 10,
        "stages_s": {"text_encoder": 0.01, "unet": median * 0.8, "vae_decoder": 0.02},
        "codec_s": {"request_decode": 0.001, "compose": 0.001, "response_encode": 0.002},
        "peak_rss_mb": 400.0,
    }


def _http(batching: str, mbs: int) -> dict:
    loop = [
        {
            "concurrency": c,
            "requests": 2 * c,
            "repeats_done": 2,
            "throughput_img_s": summarize([c * 1.0, c * 1.2]),
            "latency_s": _lat(0.2 * c),
            "errors": {},
        }
        for c in (1, 4)
    ]
    return {
        "label": "ours ort-cpu fp32",
        "batching": batching,
        "max_batch_size": mbs,
        "device_class": "cpu",
        "width": 64,
        "height": 64,
        "steps": 10,
        "closed_loop": loop,
        "open_loop": None,
        "peak_rss_mb": 500.0,
    }


def test_report_document_json_markdown_and_plots(tmp_path):
    results = {
        "inprocess": [
            _inproc("ours", "ours ort-cpu fp32", 0.5),
            _inproc("diffusers", "diffusers torch-cpu fp32", 1.5),
        ],
        "http": [_http("on", 4), _http("off", 1)],
        "flops": {},
        "peak": {},
        "compute_floor": [],
        "skipped": [],
    }
    doc = report.document(
        {"cpu_model": "x"},
        {"onnxruntime": "1"},
        {"preset": "ci", "started": "now", "model_description": "m", "threads": 2},
        results,
        ["random weights"],
    )
    path = report.write_json(doc, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert set(report.REQUIRED_KEYS) <= set(data)
    speed = data["summary"]["speedup_vs_diffusers"]
    key = "ours ort-cpu fp32 vs diffusers torch-cpu fp32 @ 64x64/10 steps [in-process]"
    assert speed[key] == pytest.approx(3.0)  # baseline 1.5 s / ours 0.5 s: we are 3x faster
    http_key = key.replace("in-process", "http c=1")
    assert speed[http_key] == pytest.approx(1.5 / 0.2)
    assert data["summary"]["batching_throughput_gain"]["ours ort-cpu fp32 c=4"] == 1.0
    md = report.markdown(doc)
    assert "| configuration |" in md and "**3.00x**" in md and "HTTP/other" in md
    pngs = report.plots(doc, tmp_path / "r")
    assert len(pngs) == 3 and all((tmp_path / p).is_file() for p in pngs.values())
    with pytest.raises(ValueError):
        report.write_json({"machine": {}}, tmp_path / "bad.json")


def test_update_readme_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- latest:ci -->\nold\n<!-- /latest:ci -->\nb\n")
    assert report.update_readme(readme, "ci", "| new |", "x.json")
    text = readme.read_text()
    assert "old" not in text and "| new |" in text and text.startswith("a\n") and "x.json" in text
    assert not report.update_readme(readme, "cpu", "t", "x.json")


def test_presets_match_the_issue():
    assert set(PRESETS) == {"ci", "cpu", "cpu-512", "cpu-512-smoke", "gpu"}
    gpu = PRESETS["gpu"]
    assert (gpu.width, gpu.height, gpu.steps) == (512, 512, (20, 50))
    assert {v.provider for v in gpu.ours} == {"cuda", "tensorrt"}
    assert all(v.precision == "fp16" for v in gpu.ours) and gpu.baselines[0].dtype == "fp16"
    # default and fast recipe on the GPU too
    assert [(r.name, r.steps) for r in gpu.all_recipes] == [
        ("default", 20),
        ("default", 50),
        ("fast", 4),
    ]
    cpu = PRESETS["cpu"]
    assert cpu.model == "sd15-random" and cpu.budget_s < 20 * 60
    assert {b.dtype for b in cpu.baselines} == {"fp32", "bf16-autocast"}
    for p in PRESETS.values():  # levels ascend from one request at a time (the c=1 latency)
        assert p.concurrency[0] == 1 and list(p.concurrency) == sorted(set(p.concurrency)), p.name
        assert len(p.batch_sizes) >= 1 and all(b >= 1 for b in p.batch_sizes), p.name
    # the batching target (tiny model, concurrency 12) is measured by ci, batching on and off
    ci = PRESETS["ci"]
    assert 12 in ci.concurrency and ci.model == "tiny" and "batching" in ci.targets
    # batching on = the server's default --max-batch-size, off = one row per call
    assert ci.batch_sizes == (BatchingConfig().max_batch_size, 1)


def test_phase_peak_memory_is_the_phase_own_not_inherited():
    # Linux keeps ru_maxrss across exec, so a child of a big parent would report the parent's
    # peak; VmHWM (what phases record) is per address space.
    import subprocess
    import sys

    import numpy as np

    ballast = np.ones((300, 1024, 1024), np.uint8)  # ~300 MB resident in this process
    code = "import os; from benchmarks.memory import vm_hwm_mb; print(vm_hwm_mb(os.getpid()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert float(out.stdout) < 200
    assert ballast.sum() > 0


def test_a_phase_keeps_each_finished_configuration(tmp_path, monkeypatch):
    # a phase killed for time must still report the configurations it finished: the phase
    # writes them after each one, next to its result, where the runner reads them
    import json

    from benchmarks import inprocess, phase

    def fake_bench(folder, *, log, on_result, **kw):
        runs = []
        for cfg in kw["configs"]:
            runs.append({"width": cfg["width"]})
            on_result(runs)
            kept = json.loads(phase.partial_path(tmp_path / "out.json").read_text())
            assert kept["runs"] == runs
        return runs

    monkeypatch.setattr(inprocess, "bench_ours", fake_bench)
    spec = {"kind": "ours", "args": {"folder": "x", "configs": [{"width": 8}, {"width": 16}]}}
    out = phase.run(spec, phase.partial_path(tmp_path / "out.json"))
    assert out["runs"] == [{"width": 8}, {"width": 16}]
    assert phase.partial_path(tmp_path / "out.json").name == "out.partial.json"

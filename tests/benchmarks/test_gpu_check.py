"""``make gpu-check``'s CPU-visible logic: argument handling, the JSON it writes, the skip
paths (no CUDA EP, no TensorRT EP, over budget, --dry-run) and a whole run with the CPU EP on
the tiny exports (``--cpu``); the carry helpers (split/join, the environment for the device).
The CUDA paths themselves need the lent GPU machine (docs/gpu.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_carry, gpu_check

pytest.importorskip("onnxruntime")


def read(out: Path) -> dict:
    return json.loads((out / "gpu-check.json").read_text())


def test_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "o"))
    args = gpu_check.parse_args(["--steps", "4,8"])
    assert args.steps == [4, 8] and args.out == tmp_path / "o" and args.size == 512
    for bad in (["--steps", "x"], ["--steps", "0"], ["--size", "100"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_dry_run_writes_the_plan(tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    doc = read(tmp_path)
    assert doc["mode"] == "dry-run" and list(doc["stages"]) == list(gpu_check.STAGES)
    assert all(s["status"] == "skipped" for s in doc["stages"].values())


def test_without_cuda_every_gpu_stage_is_skipped_with_what_to_install(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    doc = read(tmp_path)
    assert doc["stages"]["environment"]["status"] == "ok"
    for stage in gpu_check.STAGES[1:]:
        assert doc["stages"][stage]["status"] == "skipped"
        assert "onnxruntime-gpu" in doc["stages"][stage]["note"]


def test_cpu_run_end_to_end_on_the_tiny_exports(tmp_path, tiny_model_fp32, tiny_model_fp16):
    out = tmp_path / "out"
    rc = gpu_check.main(
        ["--cpu", "--out", str(out), "--tiny-fp32", str(tiny_model_fp32),
         "--tiny-fp16", str(tiny_model_fp16), "--size", "64", "--steps", "2", "--repeats", "1"]
    )  # fmt: skip
    doc = read(out)
    st = doc["stages"]
    assert doc["mode"] == "cpu" and list(st) == list(gpu_check.STAGES)
    assert "CPUExecutionProvider" in st["environment"]["providers"]
    parity = st["parity"]
    assert parity["status"] == "ok", parity
    assert set(parity["components"]) >= {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    for c in parity["components"].values():  # fp16 weights vs fp32: small but not zero
        assert 0 < c["max_rel_err"] <= c["limit"] == gpu_check.FP16_COMPONENT_RTOL
    assert 0 < parity["image"]["max_abs"] <= gpu_check.FP16_IMAGE_MAX
    assert st["tensorrt"]["status"] == "skipped" and "TensorRT" in st["tensorrt"]["note"]
    assert st["export_full"]["status"] == "skipped"
    bench = st["bench"]
    assert bench["status"] == "ok", bench
    recipes = {(r["recipe"], r["steps"]) for r in bench["results"]}
    assert ("default", 2) in recipes and ("fast", 4) in recipes  # the server has LCM
    for r in bench["results"]:
        assert r["latency_s"] > 0 and r["size"] == "64x64" and len(r["runs_s"]) == 1
    assert bench["model"]["provider"]["name"] == "cpu"
    assert rc == 0


def test_over_budget_stages_are_skipped(tmp_path, tiny_model_fp32, tiny_model_fp16):
    rc = gpu_check.main(
        ["--cpu", "--out", str(tmp_path), "--tiny-fp32", str(tiny_model_fp32),
         "--tiny-fp16", str(tiny_model_fp16), "--budget-s", "0"]
    )  # fmt: skip
    st = read(tmp_path)["stages"]
    assert rc == 0 and st["parity"]["status"] == "skipped" and "budget" in st["parity"]["note"]


def test_missing_exports_are_a_skip_not_a_crash(tmp_path):
    rc = gpu_check.main(
        ["--cpu", "--out", str(tmp_path), "--tiny-fp32", str(tmp_path / "nope"),
         "--tiny-fp16", str(tmp_path / "nope"), "--skip-full"]
    )  # fmt: skip
    st = read(tmp_path)["stages"]
    assert st["parity"]["status"] == "skipped" and "gpu_carry" in st["parity"]["note"]
    assert st["bench"]["status"] == "failed"  # --cpu benches the tiny fp32 folder: absent
    assert rc == 1


def test_split_and_join_round_trip(tmp_path):
    src = tmp_path / "kit.tar"
    data = bytes(range(256)) * 41  # 10496 bytes
    src.write_bytes(data)
    parts = gpu_carry.split(src, tmp_path / "parts", 4000)
    assert [p.parent.name for p in parts] == ["00", "01", "02"]
    assert [p.stat().st_size for p in parts] == [4000, 4000, 2496]
    carried = tmp_path / "w"  # on the device each call copies its part into one folder
    for p in parts:
        (carried / p.parent.name).mkdir(parents=True)
        (carried / p.parent.name / "part").write_bytes(p.read_bytes())
    assert gpu_carry.join(carried, tmp_path / "joined").read_bytes() == data
    with pytest.raises(FileNotFoundError):
        gpu_carry.join(tmp_path / "empty", tmp_path / "x")


def test_device_environment(tmp_path):
    site = tmp_path / "site"
    for lib in ("nvidia/cudnn/lib", "nvidia/cublas/lib", "torch/lib"):
        (site / lib).mkdir(parents=True)
    assert gpu_carry.library_dirs([site]) == [
        str(site / "nvidia/cublas/lib"),
        str(site / "nvidia/cudnn/lib"),
        str(site / "torch/lib"),
    ]
    env = gpu_carry.gpu_env(tmp_path / "target", {"PYTHONPATH": "/x", "LD_LIBRARY_PATH": "/l"})
    assert env["PYTHONPATH"].split(":")[:2] == [str(tmp_path / "target"), str(gpu_carry.ROOT)]
    assert env["PYTHONPATH"].endswith(":/x") and env["LD_LIBRARY_PATH"].endswith("/l")
    assert gpu_carry.missing_distributions(["numpy", "nope-pkg-xyz"]) == ["nope-pkg-xyz"]

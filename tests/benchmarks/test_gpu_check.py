"""``make gpu-check``'s CPU-visible logic: argument handling, the JSON it writes, the skip
paths (no CUDA EP, no TensorRT EP, over budget, --dry-run), a whole run with the CPU EP on the
tiny exports (``--cpu``: our fast rows decode with a tiny TAESD, the baseline is diffusers fp32
on the CPU on the same pipeline folder and TAESD weights), the full export's commands, the GPU
targets' verdicts; the carry helpers (split/join, the environment for the device, the wheels
the baseline needs). The CUDA paths themselves need the lent GPU machine (docs/gpu.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_carry, gpu_check

pytest.importorskip("onnxruntime")


def read(out: Path) -> dict:
    return json.loads((out / "gpu-check.json").read_text())


@pytest.fixture(scope="module")
def tiny_taesd() -> Path:
    from tests import artifacts

    return artifacts.tiny_vae(seed=0)


@pytest.fixture(scope="module")
def tiny_taesd_export(tiny_taesd) -> Path:
    """The tiny preset exported with a tiny TAESD beside it: the test-model cache's entry, the
    one tests/export/test_taesd_export.py uses (built once per source version)."""
    from tests import artifacts

    return artifacts.export(
        "--tiny", "--tiny-vae", tiny_taesd, "--precision", "fp32", folder="tiny-taesd"
    )


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
    assert list(doc["stages"])[-2:] == ["bench", "baseline"]
    assert all(s["status"] == "skipped" for s in doc["stages"].values())
    plan = {k: v["plan"] for k, v in doc["stages"].items()}
    assert (
        "TAESD" in plan["bench"] and "LCM" in plan["bench"] and "--tiny-vae" in plan["export_full"]
    )
    assert "diffusers" in plan["baseline"] and "fp16 on CUDA" in plan["baseline"]
    assert "50 steps" in plan["baseline"] and "targets" in plan["baseline"]


def test_without_cuda_every_gpu_stage_is_skipped_with_what_to_install(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    doc = read(tmp_path)
    assert doc["stages"]["environment"]["status"] == "ok"
    for stage in gpu_check.STAGES[1:]:
        assert doc["stages"][stage]["status"] == "skipped"
        assert "onnxruntime-gpu" in doc["stages"][stage]["note"]


def test_cpu_run_end_to_end_on_the_tiny_exports(
    tmp_path, tiny_model_fp32, tiny_model_fp16, tiny_pipeline_dir, tiny_taesd, tiny_taesd_export
):
    out = tmp_path / "out"
    rc = gpu_check.main(
        ["--cpu", "--out", str(out), "--tiny-fp32", str(tiny_model_fp32),
         "--tiny-fp16", str(tiny_model_fp16), "--full", str(tiny_taesd_export),
         "--pipeline", str(tiny_pipeline_dir), "--taesd", str(tiny_taesd),
         "--size", "64", "--steps", "2", "--repeats", "1"]
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
    assert st["export_full"]["status"] == "ok" and "--full" in st["export_full"]["note"]

    bench = st["bench"]
    assert bench["status"] == "ok", bench
    rows = {(r["recipe"], r["steps"]): r for r in bench["results"]}
    assert set(rows) == {("default", 2), ("fast", 4)}  # the server has LCM
    quick = rows[("fast", 4)]  # the real fast recipe: LCM, no guidance, TAESD decode
    assert quick["scheduler"] == "lcm" and quick["guidance"] == 1.0 and quick["unet_batch"] == 1
    assert quick["tiny_vae"] is True and not rows[("default", 2)]["tiny_vae"]
    assert rows[("default", 2)]["guidance"] == 7.5 and rows[("default", 2)]["unet_batch"] == 2
    for r in bench["results"]:
        assert r["latency_s"] > 0 and r["size"] == "64x64" and len(r["runs_s"]) == 1
    assert bench["model"]["provider"]["name"] == "cpu"
    assert bench["model"]["tiny_vae"] and "note" not in bench

    base = st["baseline"]  # diffusers fp32 on the CPU, the same folder and TAESD weights
    assert base["status"] == "ok", base
    assert (base["device"], base["dtype"]) == ("cpu", "fp32")
    assert base["pipeline"] == str(tiny_pipeline_dir) and base["taesd"] == str(tiny_taesd)
    theirs = {(r["recipe"], r["steps"]): r for r in base["results"]}
    assert set(theirs) == {("default", 2), ("fast", 4)}
    assert theirs[("fast", 4)]["scheduler"] == "lcm" and theirs[("fast", 4)]["tiny_vae"]
    assert theirs[("fast", 4)]["guidance"] == 1.0
    assert theirs[("fast", 4)]["unet_calls_per_image"] == 4
    for r in base["results"]:
        assert r["latency_s"] > 0 and r["size"] == "64x64" and r["timed_images"] == 1
    assert {(v["recipe"], v["steps"]) for v in base["vs_ours"]} == set(theirs)
    assert all(v["speedup"] > 0 for v in base["vs_ours"])

    targets = {t["name"]: t for t in doc["targets"]}
    assert set(targets) == {"default_latency_s", "default_vs_diffusers", "fast_latency_s"}
    vs = targets["default_vs_diffusers"]
    assert vs["measured"] == pytest.approx(vs["diffusers_s"] / vs["ours_s"])
    assert vs["diffusers_dtype"] == "fp32" and vs["device"] == "cpu"
    assert targets["fast_latency_s"]["measured"] == quick["latency_s"]
    for t in targets.values():  # measured, but not as the targets are stated (512 px, 50 steps)
        assert t["measured"] > 0 and t["pass"] is None and t["note"], t
    assert rc == 0


def test_over_budget_stages_are_skipped(tmp_path, tiny_model_fp32, tiny_model_fp16):
    rc = gpu_check.main(
        ["--cpu", "--out", str(tmp_path), "--tiny-fp32", str(tiny_model_fp32),
         "--tiny-fp16", str(tiny_model_fp16), "--budget-s", "0"]
    )  # fmt: skip
    doc = read(tmp_path)
    st = doc["stages"]
    assert rc == 0 and st["parity"]["status"] == "skipped" and "budget" in st["parity"]["note"]
    assert st["baseline"]["status"] == "skipped" and "budget" in st["baseline"]["note"]
    assert [t["pass"] for t in doc["targets"]] == [None] * 3
    assert all(t["note"] == "not measured" for t in doc["targets"])


def test_baseline_is_the_stage_skipped_when_it_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.ESTIMATE_S, "baseline", 10_000)
    rc = gpu_check.main(
        ["--cpu", "--out", str(tmp_path), "--tiny-fp32", str(tmp_path / "nope"),
         "--tiny-fp16", str(tmp_path / "nope"), "--skip-full", "--pipeline", str(tmp_path)]
    )  # fmt: skip
    st = read(tmp_path)["stages"]
    assert st["bench"]["status"] == "failed"  # ran (and found no model): it fitted
    assert st["baseline"]["status"] == "skipped"
    assert "budget" in st["baseline"]["note"] and "10000 s needed" in st["baseline"]["note"]
    assert rc == 1


def test_missing_exports_are_a_skip_not_a_crash(tmp_path):
    rc = gpu_check.main(
        ["--cpu", "--out", str(tmp_path), "--tiny-fp32", str(tmp_path / "nope"),
         "--tiny-fp16", str(tmp_path / "nope"), "--skip-full"]
    )  # fmt: skip
    st = read(tmp_path)["stages"]
    assert st["parity"]["status"] == "skipped" and "gpu_carry" in st["parity"]["note"]
    assert st["bench"]["status"] == "failed"  # --cpu benches the tiny fp32 folder: absent
    assert st["baseline"]["status"] == "skipped" and "pipeline" in st["baseline"]["note"]
    assert rc == 1


@pytest.mark.parametrize("cpu", [False, True])
def test_export_full_exports_the_pipeline_folder_with_a_taesd(tmp_path, monkeypatch, cpu):
    """The export is made from a saved pipeline folder (the baseline's input) with a random
    TAESD beside it (--tiny-vae): full size on the GPU, the tiny ones with --cpu."""
    from benchmarks import assets

    built, cmds = [], []

    def folder(kind):
        def build(model, cache, **_):
            built.append((kind, model))
            return cache / f"{model}-{kind}"

        return build

    def fake_run(cmd, **kw):
        cmds.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        manifest = {"components": {"unet": {}, "taesd_decoder": {}}, "verification": [
            {"component": "unet", "passed": True}]}  # fmt: skip
        (out / "manifest.json").write_text(json.dumps(manifest))
        return gpu_check.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets, "pipeline_dir", folder("pipeline"))
    monkeypatch.setattr(assets, "taesd_dir", folder("taesd"))
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    args = gpu_check.parse_args(["--out", str(tmp_path)] + (["--cpu"] if cpu else []))
    env = {"diffusers": "x", "transformers": "x", "onnxscript": "x"}
    result, src = gpu_check.export_full(args, env, gpu_check.Run(args))
    model = "tiny" if cpu else "sd15-random"
    assert built == [("pipeline", model), ("taesd", model)]
    work = tmp_path / "work"
    assert src["pipeline"] == work / f"{model}-pipeline" and src["taesd"] == work / f"{model}-taesd"
    (cmd,) = cmds
    opt = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1, 2)}
    assert cmd[1:3] == ["-m", "export"] and opt["--model"] == str(src["pipeline"])
    assert opt["--tiny-vae"] == str(src["taesd"]) and opt["--out"] == str(src["folder"])
    assert (opt["--precision"], opt["--target"]) == (("fp32", "cpu") if cpu else ("fp16", "cuda"))
    assert ("--threads" in opt) is not cpu  # the device: all its cores for the PyTorch refs
    assert result["status"] == "ok" and "taesd_decoder" in result["components"]
    assert result["pipeline"] == str(src["pipeline"])


def _row(recipe, steps, latency, size="512x512", tiny_vae=False):
    return {"recipe": recipe, "steps": steps, "latency_s": latency, "size": size,
            "tiny_vae": tiny_vae}  # fmt: skip


def test_gpu_target_verdicts():
    def verdicts(ours, theirs, steps=50):
        got = gpu_check.targets(ours, theirs, steps=steps, device="NVIDIA H200", precision="fp16")
        return {t["name"]: t for t in got}

    ours = [
        _row("default", 20, 0.2),
        _row("default", 50, 0.4),
        _row("fast", 4, 0.05, tiny_vae=True),
    ]
    t = verdicts(ours, [_row("default", 50, 1.0), _row("fast", 4, 0.3, tiny_vae=True)])
    assert [(x["measured"], x["pass"]) for x in t.values()] == [
        (0.4, True), (pytest.approx(2.5), True), (0.05, True)
    ]  # fmt: skip
    assert t["default_latency_s"]["target"] == 0.45 and t["fast_latency_s"]["target"] == 0.06
    assert t["default_vs_diffusers"]["target"] == 2.0 and t["default_vs_diffusers"]["op"] == ">="
    assert t["default_latency_s"]["device"] == "NVIDIA H200" and t["fast_latency_s"]["steps"] == 4
    assert t["default_vs_diffusers"]["diffusers_dtype"] == "fp16"

    slow = [_row("default", 50, 0.6), _row("fast", 4, 0.08, tiny_vae=True)]
    t = verdicts(slow, [_row("default", 50, 1.0)])
    assert [x["pass"] for x in t.values()] == [False, False, False]

    t = verdicts([_row("fast", 4, 0.05)], None)  # no TAESD in the export, no default, no baseline
    assert t["fast_latency_s"]["pass"] is None and "full VAE" in t["fast_latency_s"]["note"]
    assert t["default_latency_s"]["note"] == t["default_vs_diffusers"]["note"] == "not measured"

    t = verdicts(ours, [_row("default", 20, 1.0)], steps=20)  # --steps without 50
    assert t["default_latency_s"]["measured"] == 0.2 and t["default_latency_s"]["pass"] is None
    assert "50" in t["default_vs_diffusers"]["note"] and t["fast_latency_s"]["pass"] is True


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
    wheel = Path("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl")
    assert gpu_carry.wheel_distribution(wheel) == "onnxruntime-gpu"
    assert gpu_carry.missing_distributions([gpu_carry.wheel_distribution(wheel)])


def test_carried_wheels_cover_what_the_baseline_imports():
    """diffusers' and transformers' requirement closure (for the device's Python 3.12) in this
    venv's installed metadata, minus what the device has (gpu_carry.DEVICE_HAS and their
    requirements), is among the carried wheels, which gpu_carry derives from the lock's
    ``# via`` graph instead: the baseline stage imports diffusers there (importlib-metadata ->
    lazy-importer was once missing; transformers 5.25 -> kernels, tomlkit). A failure means a
    root is missing from gpu_carry.ROOTS or deploy/constraints.txt is stale (`make lock`)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    py312 = {"python_version": "3.12", "python_full_version": "3.12.0", "extra": ""}

    def closure(root: str) -> set[str]:
        seen: set[str] = set()
        todo = [root]
        while todo:
            name = canonicalize_name(todo.pop())
            if name in seen:
                continue
            try:
                reqs = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            for r in map(Requirement, reqs):
                if r.marker is None or r.marker.evaluate(py312):
                    todo.append(r.name)
        return seen

    pytest.importorskip("diffusers")
    device_has = set().union(*map(closure, gpu_carry.DEVICE_HAS))
    carried = gpu_carry.carried()
    needed = (closure("diffusers") | closure("transformers")) - device_has
    assert needed <= set(carried), sorted(needed - set(carried))
    assert {"onnxruntime-gpu", "open-clip-torch"} <= set(carried)  # not imported by diffusers


def test_carried_wheels_are_the_locks_pins_for_the_device(tmp_path):
    """Versions come from deploy/constraints.txt's pins for CPython 3.12 on Linux x86-64 (its
    markers evaluated), the device's own packages and their requirements are left out, and a
    root's whole requirement chain is followed."""
    lock = tmp_path / "constraints.txt"
    lock.write_text(
        "# This file was autogenerated by uv via the following command:\n"
        "#    make lock\n"
        "diffusers==0.42.1 ; python_full_version >= '3.11'\n"
        "    # via inpaint-server (pyproject.toml)\n"
        "diffusers==0.41.0 ; python_full_version < '3.11'\n"
        "    # via inpaint-server (pyproject.toml)\n"
        "colorama==0.4.6 ; sys_platform == 'win32'\n"
        "    # via tqdm\n"
        "filelock==3.20.0\n"
        "    # via\n"
        "    #   diffusers\n"
        "    #   torch\n"
        "importlib-metadata==10.2.0\n"
        "    # via diffusers\n"
        "lazy-importer==0.1.0\n"
        "    # via importlib-metadata\n"
        "onnxruntime-gpu==1.31.1 ; python_full_version >= '3.11'\n"
        "    # via inpaint-server (pyproject.toml)\n"
        "tqdm==4.70.1\n"
        "    # via diffusers\n"
        "torch==2.13.0\n"
        "    # via -r deploy/constraints.in\n"
    )
    assert gpu_carry.carried(lock) == {
        "diffusers": "0.42.1",
        "importlib-metadata": "10.2.0",
        "lazy-importer": "0.1.0",
        "onnxruntime-gpu": "1.31.1",
        "tqdm": "4.70.1",
    }
    real = gpu_carry.carried()  # the checkout's lock: onnxruntime-gpu is its pin, built for cu13
    assert real["onnxruntime-gpu"] and not set(real) & set(gpu_carry.DEVICE_HAS)

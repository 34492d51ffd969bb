"""``--provider auto`` on the real runtimes with the tiny export: the per-component choice, the
one-time accuracy and speed check against fp32 and its fallbacks, what describe() reports, and the
OpenVINO compiled-graph cache (disk blobs, static per-shape graphs) through its counters and
the cache folder's content.

The plans come from sample flag sets, the precisions from this machine: where it has no bf16
units, OpenVINO runs a bf16 hint in f32 and auto must reject it as "not native"; both outcomes
are asserted.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from server.models.cpu_features import native_unit, read_cpu_flags
from server.models.manifest import Manifest
from server.models.providers import AutoProvider, CPUProvider, OpenVINOProvider, fused_attention
from server.models.providers.accuracy import sample_feeds
from server.models.providers.plan import FP32_RUNTIME
from tests.helpers import NO_AMX_BF16, NO_NATIVE_BF16

pytest.importorskip("openvino")

AVX2 = {"avx2", "fma"}
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}
BOTH = {"onnxruntime", "openvino"}
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
NATIVE_BF16 = native_unit(read_cpu_flags(), "bf16") is not None


@pytest.fixture
def tiny(tiny_model_fp32, tmp_path):
    """A private copy of the tiny export (the caches are written into the model folder)."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model_fp32, folder)
    return folder, Manifest.read(folder)


def load_all(provider, folder, manifest):
    return {c: provider.load(folder / s.file, s) for c, s in manifest.components.items()}


def cache_files(folder) -> list[str]:
    return sorted(p.name for p in (folder / "ov_cache").glob("*.blob"))


def verdicts(folder) -> dict:
    return json.loads((folder / "ov_cache" / "accuracy-checks.json").read_text())


def accuracy_verdicts(folder) -> dict:
    """The kept accuracy verdicts (the file also holds the static-graph measures)."""
    return {k: v for k, v in verdicts(folder).items() if "max_rel_err" in v}


def test_avx2_machine_runs_fp32_with_no_check(tiny):
    folder, m = tiny
    auto = AutoProvider(threads=1, flags=AVX2, runtimes=BOTH)
    sessions = load_all(auto, folder, m)
    assert auto.checks_run == 0
    comps = auto.describe()["components"]
    assert {c: (v["runtime"], v["precision"]) for c, v in comps.items()} == {
        c: (FP32_RUNTIME[c], "fp32") for c in COMPONENTS
    }
    assert "no bf16/fp16 units" in comps["unet"]["why"]
    spec = m.components["unet"]
    feeds = sample_feeds(spec)
    ref = CPUProvider(threads=1).load(folder / spec.file, spec).run(feeds)["out_sample"]
    out = sessions["unet"].run(feeds)["out_sample"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_reduced_precision_within_tolerance_is_kept_and_reported(tiny):
    folder, m = tiny
    loose = {c: 0.2 for c in COMPONENTS}
    # min_speedup 0: on the tiny model bf16 is no faster than fp32, which is beside the point here
    auto = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, tolerances=loose, min_speedup=0)
    sessions = load_all(auto, folder, m)
    comps = auto.describe()["components"]
    if not NATIVE_BF16:
        assert all(v["precision"] == "fp32" for v in comps.values())
        assert all("not native" in v["why"] for v in comps.values())
        return
    assert {c: (v["runtime"], v["precision"]) for c, v in comps.items()} == {
        c: ("openvino", "bf16") for c in COMPONENTS
    }
    assert auto.checks_run == 4
    for v in comps.values():
        assert 0 < v["max_rel_err"] <= 0.2 and v["why"].startswith("avx512_bf16 native; max rel")
        assert "x fp32's speed on the sample" in v["why"]
    spec = m.components["unet"]
    feeds = sample_feeds(spec, seed=3)  # not the checked sample
    ref = CPUProvider(threads=1).load(folder / spec.file, spec).run(feeds)["out_sample"]
    out = sessions["unet"].run(feeds)["out_sample"]
    assert 0 < np.abs(out - ref).max() <= 0.2 * np.abs(ref).max()
    assert sessions["unet"].effective_precision == "bf16"


def test_beyond_tolerance_falls_back_to_fp32_and_the_verdict_is_kept(tiny, caplog):
    folder, m = tiny
    strict = {c: 1e-9 for c in COMPONENTS}
    caplog.set_level(logging.WARNING, logger="server.models.providers")
    auto = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, tolerances=strict)
    load_all(auto, folder, m)
    comps = auto.describe()["components"]
    assert {c: v["precision"] for c, v in comps.items()} == {c: "fp32" for c in COMPONENTS}
    reason = "max rel err" if NATIVE_BF16 else "not native"
    assert all("fell back from openvino bf16: " in v["why"] for v in comps.values())
    assert all(reason in v["why"] for v in comps.values())
    assert sum("fell back" in r.getMessage() for r in caplog.records) == 4
    # rejected graphs leave no blob behind; the fp32 OpenVINO ones stay for the next start
    assert cache_files(folder) == sorted(f for f in cache_files(folder) if f.split("-")[1] == "f32")
    if not NATIVE_BF16:
        return
    checks = accuracy_verdicts(folder)
    assert len(checks) == 4 and all(v["max_rel_err"] > 1e-9 for v in checks.values())

    again = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, tolerances=strict)
    load_all(again, folder, m)
    assert again.checks_run == 0  # checked once: the kept verdicts decide
    assert {c: v["precision"] for c, v in again.choices.items()} == {c: "fp32" for c in COMPONENTS}
    assert all("cached check" in v["why"] for v in again.choices.values())
    (cache,) = again.describe()["cache"]
    assert cache["folder"] == "ov_cache" and str(folder) not in json.dumps(again.describe())
    n_ov = sum(FP32_RUNTIME[c] == "openvino" for c in COMPONENTS)
    assert (cache["hits"], cache["misses"], cache["stores"]) == (n_ov, 0, 0)


# the speed check follows the error's, which a bf16 hint computed in f32 does not have
@pytest.mark.skipif(not NATIVE_BF16, reason=NO_NATIVE_BF16)
def test_accurate_but_not_faster_falls_back_to_fp32_and_the_verdict_is_kept(tiny):
    folder, m = tiny
    loose = {c: 0.2 for c in COMPONENTS}
    # a speed-up no graph reaches: every accurate candidate is refused for its speed
    auto = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, tolerances=loose, min_speedup=1e6)
    load_all(auto, folder, m)
    comps = auto.describe()["components"]
    assert {c: v["precision"] for c, v in comps.items()} == {c: "fp32" for c in COMPONENTS}
    for v in comps.values():
        assert "fell back from openvino bf16: not faster: " in v["why"]
        assert "x fp32's speed on the sample (needs 1000000.00x)" in v["why"]
    checks = accuracy_verdicts(folder)
    assert len(checks) == 4
    for v in checks.values():
        assert 0 < v["max_rel_err"] <= 0.2 and 0 < v["speedup"] < 1e6
        assert v["reason"].startswith("not faster: ")
    # the kept verdict holds the measured speed-up: a lower bar accepts it with no new check
    again = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, tolerances=loose, min_speedup=0)
    load_all(again, folder, m)
    assert again.checks_run == 0
    assert {c: v["precision"] for c, v in again.choices.items()} == {c: "bf16" for c in COMPONENTS}


def test_openvino_second_load_imports_the_compiled_graph(tiny):
    folder, m = tiny
    spec = m.components["unet"]
    path = folder / spec.file
    # the AMX attention kernel (on AMX CPUs) makes graphs that cannot be exported: off here
    first = OpenVINOProvider("bf16", threads=1, amx_attention="off")
    out1 = first.load(path, spec).run(sample_feeds(spec))["out_sample"]
    cache = first._caches[folder / "ov_cache"]
    assert (cache.hits, cache.misses, cache.stores) == (0, 1, 1)
    (blob,) = cache_files(folder)
    assert blob.startswith("unet-bf16-")
    meta = json.loads((folder / "ov_cache" / blob).with_suffix(".json").read_text())
    assert meta["files"] == spec.sha256 and meta["precision"] == "bf16"
    second = OpenVINOProvider("bf16", threads=1, amx_attention="off")
    session = second.load(path, spec)
    cache2 = second._caches[folder / "ov_cache"]
    assert (cache2.hits, cache2.misses, cache2.stores) == (1, 0, 0)
    assert second.precise_nodes == first.precise_nodes >= 4  # the time-embedding pin kept
    np.testing.assert_array_equal(session.run(sample_feeds(spec))["out_sample"], out1)
    # another precision is another graph
    OpenVINOProvider("f32", threads=1).load(path, spec)
    assert len(cache_files(folder)) == 2


def test_graphs_with_the_amx_kernel_skip_the_blob_cache(tiny):
    """A Python operation cannot be exported: such graphs compile at every load, nothing is
    stored, and the output is OpenVINO's own attention's within bf16 rounding."""
    if fused_attention.load() is None:  # graphs keep OpenVINO's attention
        pytest.skip(NO_AMX_BF16)
    folder, m = tiny
    spec = m.components["unet"]
    path = folder / spec.file
    fused = OpenVINOProvider("bf16", threads=1)
    out = fused.load(path, spec).run(sample_feeds(spec))["out_sample"]
    assert (
        fused.fused_attention == {"unet": fused.fused_attention["unet"]}
        and fused.fused_attention["unet"] >= 1
    )
    assert not fused._caches and not cache_files(folder)
    plain = OpenVINOProvider("bf16", threads=1, amx_attention="off", cache=False)
    ref = plain.load(path, spec).run(sample_feeds(spec))["out_sample"]
    assert np.abs(out - ref).max() <= 0.03 * np.abs(ref).max()


def test_amx_attention_off_keeps_openvinos_attention_and_on_refuses_where_it_cannot_run(tiny):
    """``--amx-attention off`` fuses nothing (on any CPU); ``on`` starts only where the kernel
    runs, and says why not elsewhere, under auto as under an explicit bf16 provider (auto
    must not quietly fall back to fp32 for it)."""
    from server.models.providers import ProviderUnavailable, select_provider

    folder, m = tiny
    spec = m.components["unet"]
    off = select_provider("openvino:bf16", threads=1, amx_attention="off")
    off.cache = False
    off.load(folder / spec.file, spec)
    assert off.describe()["fused_attention"] == {}
    for name in ("auto", "openvino:bf16"):
        if fused_attention.load() is None:
            with pytest.raises(ProviderUnavailable, match="--amx-attention on.*use auto or off"):
                select_provider(name, threads=1, amx_attention="on")
        else:
            select_provider(name, threads=1, amx_attention="on")
    with pytest.raises(ValueError, match="--amx-attention"):
        select_provider("auto", threads=1, amx_attention="yes")


def test_auto_measures_static_graphs_for_the_unet_once_and_serves_them_beside_the_dynamic(
    tiny, monkeypatch
):
    """--static-shapes unset: auto times a static UNet graph against the dynamic one on the
    sample, keeps the measure, and (where it pays: forced here, the tiny model's gain is
    noise) serves the UNet with static graphs for returning shapes beside its dynamic graph;
    the other components stay dynamic."""
    from server.models.providers import static_plan

    folder, m = tiny
    monkeypatch.setattr(static_plan, "MIN_STATIC_SPEEDUP", 0.0)
    auto = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, min_speedup=0)
    sessions = load_all(auto, folder, m)
    assert auto.static_checks_run == 1
    (measure,) = [v for v in verdicts(folder).values() if "bytes_per_shape" in v]
    assert measure["speedup"] > 0 and measure["bytes_per_shape"] > 0
    assert measure["bytes_model"] >= 0
    unet = auto.choices["unet"]
    assert unet["static_shapes"] == static_plan.MAX_STATIC_SHAPES
    assert "static graph(s) for returning shapes" in unet["why"]
    assert all(auto.choices[c]["static_shapes"] == 0 for c in COMPONENTS if c != "unet")
    served = sessions["unet"]
    assert served.compiled is not None and served.static_shapes == []  # never ran the sample
    spec = m.components["unet"]
    feeds = sample_feeds(spec, seed=5)
    first = served.run(feeds)["out_sample"]
    assert served.static_shapes == []  # a shape seen once runs on the dynamic graph
    again = served.run(feeds)["out_sample"]
    assert len(served.static_shapes) == 1  # ... and gets its own graph when it comes back
    assert np.abs(again - first).max() <= 0.05 * np.abs(first).max()
    # a restart reads the measure; the rule decides again from the memory free now
    later = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, min_speedup=0)
    load_all(later, folder, m)
    assert later.static_checks_run == 0
    assert later.choices["unet"]["static_shapes"] == static_plan.MAX_STATIC_SHAPES
    # an explicit --static-shapes (0 included) is obeyed, nothing measured
    fixed = AutoProvider(threads=1, flags=ZEN4, runtimes=BOTH, min_speedup=0, static_shapes=0)
    load_all(fixed, folder, m)
    assert fixed.static_checks_run == 0 and fixed.choices["unet"]["static_shapes"] == 0


def test_static_graph_rule():
    from server.models.providers.static_plan import MAX_STATIC_SHAPES, static_shapes_for

    gib = 2**30
    total = 24 * gib  # reserve: a quarter, 6 GiB
    assert static_shapes_for(1.10, 2.4 * gib, 20 * gib, total) == MAX_STATIC_SHAPES
    assert static_shapes_for(1.10, 2.4 * gib, 12 * gib, total) == 2  # 6 GiB of room
    assert static_shapes_for(1.10, 2.4 * gib, 7 * gib, total) == 0  # 1 GiB: not one
    assert static_shapes_for(0.97, 2.4 * gib, 20 * gib, total) == 0  # slower: not kept
    assert static_shapes_for(1.10, 0.1 * gib, 3 * gib, 4 * gib) == 4  # reserve at least 2 GiB
    assert static_shapes_for(1.10, 2.4 * gib, 0, 0) == 0  # memory unreadable
    assert static_shapes_for(1.10, 2.4 * gib, 12 * gib, total, 3.5 * gib) == 1  # + the model


def decoder_at_shapes(tiny, seed: int, shapes):
    """The tiny VAE decoder's path and spec, random latents at ``shapes``, and its dynamic
    OpenVINO f32 session (the reference the per-shape graphs must match)."""
    folder, m = tiny
    spec = m.components["vae_decoder"]
    path = folder / spec.file
    rng = np.random.default_rng(seed)
    feeds = [{"latent_sample": rng.standard_normal(s, dtype=np.float32)} for s in shapes]
    return path, spec, feeds, OpenVINOProvider("f32", threads=1, cache=False).load(path, spec)


def test_shared_session_promotes_returning_shapes_and_never_evicts(tiny):
    path, spec, feeds, dynamic = decoder_at_shapes(
        tiny, 2, [(1, 4, 8, 8), (2, 4, 8, 8), (1, 4, 16, 8)]
    )
    provider = OpenVINOProvider("f32", threads=1, cache=False)
    shared = provider.with_static_graphs(provider.load(path, spec), path, spec, 2)
    for f in feeds:  # each once: all on the dynamic graph
        np.testing.assert_allclose(shared.run(f)["sample"], dynamic.run(f)["sample"], atol=1e-4)
    assert shared.compiles == 0
    for f in feeds:  # back again: promoted while there is room (2), the third stays dynamic
        np.testing.assert_allclose(shared.run(f)["sample"], dynamic.run(f)["sample"], atol=1e-4)
    assert shared.compiles == 2 and len(shared.static_shapes) == 2
    for f in feeds * 2:  # a full table evicts nothing: no compile ever again
        shared.run(f)
    assert shared.compiles == 2


def test_static_shapes_compile_once_per_shape_in_memory(tiny):
    folder, m = tiny
    spec = m.components["vae_decoder"]
    path = folder / spec.file
    rng = np.random.default_rng(0)
    a = {"latent_sample": rng.standard_normal((1, 4, 8, 8), dtype=np.float32)}
    b = {"latent_sample": rng.standard_normal((2, 4, 8, 16), dtype=np.float32)}
    c = {"latent_sample": rng.standard_normal((1, 4, 16, 8), dtype=np.float32)}
    dynamic = OpenVINOProvider("f32", threads=1, cache=False).load(path, spec)
    p = OpenVINOProvider("f32", threads=1, static_shapes=2)
    s = p.load(path, spec)
    assert s.input_names == ["latent_sample"] and s.output_names == ["sample"]
    for feeds in (a, a, b, a):
        np.testing.assert_allclose(
            s.run(feeds)["sample"], dynamic.run(feeds)["sample"], rtol=1e-4, atol=1e-4
        )
    assert s.compiles == 2  # a and b; the repeats reuse their graphs
    s.run(c)  # a third shape evicts the least recently used (b)
    assert s.compiles == 3 and len(s.static_shapes) == 2
    assert [dict(k)["latent_sample"] for k in s.static_shapes] == [(1, 4, 8, 8), (1, 4, 16, 8)]
    s.run(b)  # compiled again from the model read at load
    assert s.compiles == 4
    # static graphs are not written to disk: an imported one would bring its own copy of the
    # weights, compiled ones share the model read at load
    assert cache_files(folder) == []


@pytest.mark.parametrize("hint", ["f32", "bf16"])
def test_static_shapes_report_the_precision_the_cpu_computes_before_any_graph(tiny, hint):
    """A static session compiles nothing at load, yet /v1/models and the benchmark name its
    precision then: what the plugin resolves the hint to on this CPU (bf16 runs f32 without
    AVX512-BF16/AMX), the same as the dynamic graph's and the first static graph's."""
    folder, m = tiny
    spec = m.components["vae_decoder"]
    path = folder / spec.file
    dynamic = OpenVINOProvider(hint, threads=1, cache=False)
    dynamic.load(path, spec)
    static = OpenVINOProvider(hint, threads=1, static_shapes=1)
    s = static.load(path, spec)
    assert s.compiles == 0
    want = dynamic.describe()["effective_precision"]
    assert want in ("f32", "bf16") and static.describe()["effective_precision"] == want
    s.run({"latent_sample": np.zeros((1, 4, 8, 8), np.float32)})
    assert s.compiles == 1 and s.effective_precision == want


def test_unwritable_cache_still_loads(tiny, caplog):
    folder, m = tiny
    spec = m.components["vae_encoder"]
    not_a_dir = folder / "cache-file"
    not_a_dir.write_text("x")
    p = OpenVINOProvider("f32", threads=1, cache_dir=not_a_dir)
    with caplog.at_level(logging.WARNING, logger="server.models.providers"):
        out = p.load(folder / spec.file, spec).run(sample_feeds(spec))
    assert np.isfinite(out["latent_mean"]).all()
    assert any("not writable" in r.getMessage() for r in caplog.records)
    assert p.describe()["cache"][0]["enabled"] is False


def test_auto_in_the_pipeline_describes_each_component(tiny):
    from server.models.base import Row
    from server.models.sd_inpaint import SDInpaintModel

    folder, _ = tiny
    model = SDInpaintModel.from_folder(folder, name="t", provider="auto", threads=1)
    d = model.describe()["provider"]
    assert d["name"] == "auto" and set(d["components"]) == set(COMPONENTS)
    for choice in d["components"].values():
        assert choice["runtime"] in ("onnxruntime", "openvino")
        assert choice["precision"] in ("fp32", "bf16", "fp16") and choice["why"]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 16:56] = 1
    (out,) = model.run([Row(image=img, mask=mask, prompt="a cat", seed=1, steps=2)])
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_static_shapes_with_streams_run_concurrently_and_drop_evicted_requests(tiny):
    """Model instances (streams) over static graphs: each caller thread runs on a request of
    its own per graph, the results match the dynamic graph's, and a graph dropped from the
    table is not kept alive by a thread's request."""
    import threading

    path, spec, feeds, dynamic = decoder_at_shapes(
        tiny, 1, [(1, 4, 8, 8), (2, 4, 8, 16), (1, 4, 16, 8)]
    )
    want = [dynamic.run(f)["sample"] for f in feeds]
    s = OpenVINOProvider("f32", threads=1, cache=False, static_shapes=2, streams=2).load(path, spec)
    errors: list[BaseException] = []

    def caller(order):
        try:
            for i in order:
                np.testing.assert_allclose(s.run(feeds[i])["sample"], want[i], rtol=1e-4, atol=1e-4)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(o,)) for o in ([0, 1, 0], [1, 0, 1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert s.compiles == 2
    caller([2, 0])  # a third shape evicts shape 1's graph
    assert not errors
    mine = s._mine.requests  # this thread's requests: only the graphs still in the table
    assert len(mine) == 2 and {id(c) for c, _ in mine.values()} == {
        id(c) for c, _ in s._static.values()
    }


def test_static_shapes_reach_the_sessions_through_select_provider_and_load_model(tiny):
    from server.models.providers import select_provider
    from server.models.registry import load_model, load_registry

    folder, _ = tiny
    assert select_provider("openvino:f32", static_shapes=3).static_shapes == 3
    auto = select_provider("auto", threads=1, static_shapes=2)
    if isinstance(auto, AutoProvider):  # cuda where onnxruntime has it
        assert auto.static_shapes == 2
    model, _ = load_model(
        folder, name="tiny", provider="openvino", threads=1, instances=1, static_shapes=2
    )
    unet = model.sessions["unet"]
    assert unet.static_shapes == []  # compiled at the first call at each shape
    model.probe()()
    assert len(unet.static_shapes) == 1 and unet.compiles == 1
    dyn, _ = load_model(folder, name="tiny", provider="openvino", threads=1, instances=1)
    assert dyn.sessions["unet"].compiled is not None  # 0 = one dynamic graph
    with pytest.raises(ValueError, match="--static-shapes must be >= 0"):
        load_registry(folder.parent, static_shapes=-1)
    with pytest.raises(ValueError, match="--amx-attention must be one of auto, on, off"):
        load_registry(folder.parent, amx_attention="yes")  # at start, before any model

"""Model instances (``server.models.instances``): the choice measured at load with fake models
whose calls do or do not run concurrently, the thread budget split, and the real tiny SD
pipeline stepping rows from two threads at once (ONNX Runtime, and OpenVINO with two streams)
exactly as it does from one."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from server.models import instances as inst
from server.models import sd_inpaint
from server.models.base import Row
from server.models.instances import Instances, check_count, choose, fixed
from server.models.registry import load_model
from server.models.sd_inpaint import SDInpaintModel


class FakeModel:
    """``probe()`` sleeps ``call_s`` per call; with ``serial`` the calls take turns (a lock),
    as on a runtime that cannot run two at once."""

    def __init__(self, call_s: float = 0.005, serial: bool = False):
        self.call_s, self.serial = call_s, serial
        self.lock = threading.Lock()
        self.closed = False
        self.calls = 0

    def close(self):
        self.closed = True

    def probe(self):
        def call():
            self.calls += 1
            if self.serial:
                with self.lock:
                    time.sleep(self.call_s)
            else:
                time.sleep(self.call_s)

        return call


class Loads:
    """The ``load`` callable ``choose`` gets: records (count, threads) and returns ``model``."""

    def __init__(self, model: FakeModel):
        self.model, self.calls = model, []

    def __call__(self, count: int, each: int | None):
        self.calls.append((count, each))
        return self.model


@pytest.fixture(autouse=True)
def quick_probe(monkeypatch):
    monkeypatch.setattr(inst, "PROBE_S", 0.1)


def test_concurrent_calls_that_pay_take_one_instance_per_thread_of_the_budget():
    first, second = FakeModel(), FakeModel()
    loads = Loads(second)
    plan, model = choose(first, loads, threads=2)
    assert loads.calls == [(2, 1)]  # loaded again for 2 instances, one thread each
    assert model is second and first.closed and not second.closed
    assert plan.count == 2 and plan.threads == 1
    assert "2 concurrent calls" in plan.reason


def test_calls_that_take_turns_keep_one_instance_and_close_the_second_load():
    first, second = FakeModel(), FakeModel(serial=True)
    plan, model = choose(first, Loads(second), threads=2)
    assert model is first and second.closed and not first.closed
    assert plan == Instances(1, 2, plan.reason) and f">= {inst.MIN_GAIN}x" in plan.reason
    assert float(re.search(r"gave ([0-9.]+)x", plan.reason).group(1)) < inst.MIN_GAIN


def test_a_split_that_slows_a_lone_request_keeps_one_instance():
    # concurrent calls pay (2 callers, no lock), but each call on a one-thread session takes 1.5x
    # as long as on the whole budget: a lone request would pay for the split
    first, second = FakeModel(call_s=0.004), FakeModel(call_s=0.006)
    plan, model = choose(first, Loads(second), threads=2)
    assert model is first and second.closed
    assert plan.count == 1 and f"<= {inst.MAX_LONE_SLOWDOWN}x" in plan.reason


def test_a_slow_call_is_not_probed_and_nothing_is_loaded_again(monkeypatch):
    monkeypatch.setattr(inst, "PROBE_MAX_CALL_S", 0.01)
    loads, slow = Loads(FakeModel()), FakeModel(call_s=0.03)
    plan, model = choose(slow, loads, threads=None)
    assert loads.calls == [] and plan.count == 1 and plan.threads is None
    assert "not probed" in plan.reason
    assert slow.calls == 1  # its first call decided it (and warmed the model up)


def test_no_probe_or_a_budget_of_one_thread_keeps_one_instance():
    loads = Loads(FakeModel())
    plan, _ = choose(object(), loads, threads=None)
    assert plan.count == 1 and "no probe" in plan.reason
    plan, _ = choose(FakeModel(), loads, threads=1)
    assert plan.count == 1 and "budget of one" in plan.reason
    assert loads.calls == []


def test_a_model_on_a_gpu_provider_keeps_one_instance():
    on_gpu = FakeModel()
    on_gpu.provider = type("P", (), {"device_class": "gpu"})()
    loads = Loads(FakeModel())
    plan, model = choose(on_gpu, loads, threads=2)
    assert model is on_gpu and plan.count == 1 and "GPU" in plan.reason and loads.calls == []


def test_a_probe_that_fails_keeps_the_model_loaded_with_one_instance():
    class Broken(FakeModel):
        def probe(self):
            def call():
                raise RuntimeError("wrong input shape")

            return call

    first, loads = FakeModel(), Loads(Broken())
    plan, model = choose(Broken(), loads, threads=2)
    assert plan.count == 1 and "probe call failed (RuntimeError)" in plan.reason
    assert loads.calls == []
    # the second load's probe fails: it is closed, the first model serves
    plan, model = choose(first, loads, threads=2)
    assert model is first and loads.model.closed and plan.count == 1


def test_fixed_counts_split_the_thread_budget(monkeypatch):
    monkeypatch.setattr(inst, "cores", lambda: 8)
    assert fixed(1, None) == Instances(1, None, "--instances 1")
    assert fixed(2, None).threads == 4
    assert fixed(3, 6).threads == 2
    assert fixed(16, None).threads == 1  # never below one thread
    with pytest.raises(ValueError, match="--instances must be >= 1"):
        check_count(0)


# ------------------------------------------------------------------ the real tiny pipeline


def rows(n: int, size: int = 64) -> list[Row]:
    yy, xx = np.mgrid[:size, :size]
    image = np.stack([xx * 3, yy * 3, 80 + 0 * xx], -1).astype(np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[16:48, 16:48] = 1
    return [
        Row(image=image, mask=mask, prompt=f"a cat {i}", seed=i, steps=4, guidance_scale=7.5)
        for i in range(n)
    ]


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_two_threads_stepping_one_model_match_one_thread(
    tiny_model_fp32: Path, provider, monkeypatch, tmp_path
):
    if provider == "openvino":
        pytest.importorskip("openvino")
    folder = tmp_path / "tiny"  # a private copy: OpenVINO writes its cache into the folder
    shutil.copytree(tiny_model_fp32, folder)
    model = SDInpaintModel.from_folder(folder, name="t", provider=provider, threads=1, instances=2)
    try:
        if provider == "openvino":
            assert model.provider.describe()["streams"] == 2
            unet = model.sessions["unet"].compiled
            assert int(unet.get_property("NUM_STREAMS")) == 2
        a, b = rows(2), rows(4)[2:]
        expected = model.run(a) + model.run(b)
        builds = []
        kept_arrays = sd_inpaint._StepBatch

        def counted(**kw):
            builds.append(threading.get_ident())
            return kept_arrays(**kw)

        monkeypatch.setattr(sd_inpaint, "_StepBatch", counted)
        out: dict[int, list[np.ndarray]] = {}
        barrier = threading.Barrier(2)

        def work(i, batch):
            barrier.wait()
            out[i] = model.run(batch)  # each thread keeps its own step arrays

        threads = [threading.Thread(target=work, args=(i, x)) for i, x in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = out[0] + out[1]
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(g, e)
        # the step arrays are kept per thread: each thread built its own once, and the other
        # thread's steps did not make it rebuild them at every step
        assert sorted(builds) == sorted(t.ident for t in threads)
    finally:
        model.close()


def test_load_model_records_what_it_chose(tiny_model_fp32: Path):
    model, plan = load_model(tiny_model_fp32, name="t", provider="cpu", threads=2)
    try:
        assert plan.count in (1, 2) and plan.reason
        # the model served is the one loaded for that many instances
        assert model.provider.describe()["threads"] == (1 if plan.count == 2 else 2)
    finally:
        model.close()
    model, plan = load_model(tiny_model_fp32, name="t", provider="cpu", threads=None, instances=2)
    try:
        assert (plan.count, plan.reason) == (2, "--instances 2")
        assert model.provider.describe()["threads"] == plan.threads >= 1
    finally:
        model.close()

"""``benchmarks/taesd_quality.py`` on the test-sized random autoencoders (seconds): its PSNR,
the decoders it exports through ``export.onnx_export`` and the report it writes. (It exercises
the exporter's tiny-VAE components outside a pipeline, hence its place beside the export tests.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import taesd_quality as tq  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def test_psnr():
    a = np.zeros((4, 4, 3), np.float32)
    assert tq.psnr(a, a) == math.inf
    assert tq.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01, peak 1
    assert tq.psnr(a, a + 1.0) == pytest.approx(0.0)


def test_random_tiny_run_measures_both_decoders():
    args = tq.parse_args(
        ["--random", "tiny", "--size", "64", "--repeats", "2", "--warmup", "0",
         "--latents", "images", "--n-images", "2", "--threads", "1"]
    )  # fmt: skip
    doc = tq.run(args, log=lambda _msg: None)
    rows = doc["quality"]["per_latent"]
    assert len(rows) == 2
    for row in rows:
        assert 0 < row["psnr_tiny_vs_full_db"] < 60  # different decoders, not identical images
        assert 0 < row["max_abs_diff"] <= 1 and row["max_abs_diff_uint8"] <= 255
        assert math.isfinite(row["psnr_full_vs_input_db"])
        assert math.isfinite(row["psnr_tiny_vs_input_db"])
    t = doc["timing"]
    for name in ("taesd_decoder", "vae_decoder"):
        assert t[name]["n"] == 2 and t[name]["median"] > 0
        assert t[name]["gflops_per_call"] > 0
    assert t["flops_ratio"] == pytest.approx(
        t["vae_decoder"]["gflops_per_call"] / t["taesd_decoder"]["gflops_per_call"]
    )
    assert doc["settings"]["random_weights"] is True
    assert "meaningless" in tq.table(doc)


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        tq.parse_args(["--model", "x"])  # no --tiny-vae
    with pytest.raises(SystemExit):
        tq.parse_args(["--random", "--size", "60"])
    assert tq.parse_args(["--random"]).latents == "noise"
    assert tq.parse_args(["--model", "m", "--tiny-vae", "t"]).latents == "images"

"""benchmarks/linear_kernels.py compares the kernels on the products it names, correctly shaped."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import linear_kernels as lk  # noqa: E402

from lightning_marl.nets.linear import onednn_matmul_available  # noqa: E402


@pytest.mark.skipif(not onednn_matmul_available(), reason="oneDNN's linear kernel is not available")
def test_both_kernels_compute_each_named_product():
    for name, (m, k, n), mkl, onednn in lk.products(64, 32, 16):
        expected, got = mkl(), onednn()
        assert expected.shape == got.shape == (m, n), name
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not onednn_matmul_available(), reason="oneDNN's linear kernel is not available")
def test_the_table_has_a_row_per_product_with_the_route(capsys):
    rows = lk.main(["--rounds", "1", "--seconds", "0.001", "--layers", "2", "3"])
    assert [row["product"] for row in rows] == [name for name, *_ in lk.products(1, 1, 1)] * 2
    assert all(row["mkl_us"] > 0 and row["onednn_us"] > 0 for row in rows)
    # A last layer (one output): every product in MKL. A first layer's forward: oneDNN's linear.
    assert [row["route"] for row in rows[3:]] == ["MKL"] * 3 and rows[0]["route"] == "oneDNN linear"
    # A first layer's weight gradient (256 x 384 x 20): oneDNN's matmul where it keeps float32, else its linear.
    assert rows[2]["route"] == ("oneDNN matmul" if lk.onednn_matmul_keeps_float32() else "oneDNN linear")
    assert "| first layer" in capsys.readouterr().out

"""The compiled peer of the benchmarks (bench/peers.py) computes the same image as the runtime."""

import pytest

import soat
from soat.bench.peers import PlainStyleGAN2
from conftest import make_styles, rel_err


def test_plain_form_equals_generate():
    G = soat.load("random:2", size=32)
    peer = PlainStyleGAN2("random:2", 32, None).eval()
    styles = make_styles(G, 2)
    assert rel_err(peer(styles), G.generate(styles)) <= 1e-5


@pytest.mark.full
def test_bench_peers_rows_on_cpu(tmp_path):
    """``soat bench --peers`` adds a compiled-peer row per dtype and batch, with fidelity against fp32."""
    from soat.bench.suite import Config, run_suite
    results = run_suite("random:2", 8, 1, "cpu", [Config("torch", "fp32")], ["generate"], [1], 0, 1,
                        str(tmp_path), peers=True)
    peer = [r for r in results if r.config == "compile-fp32"]
    assert len(peer) == 1 and peer[0].rel_err < 1e-5 and peer[0].img_per_s > 0

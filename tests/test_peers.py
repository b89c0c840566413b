"""The compiled peer of the benchmarks (bench/peers.py) computes the same image as the runtime."""

import soat
from soat.bench.peers import PlainStyleGAN2
from conftest import make_styles, rel_err


def test_plain_form_equals_generate():
    G = soat.load("random:2", size=32)
    peer = PlainStyleGAN2("random:2", 32, None).eval()
    styles = make_styles(G, 2)
    assert rel_err(peer(styles), G.generate(styles)) <= 1e-5

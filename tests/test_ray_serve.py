"""``soat serve --ray``: two Ray Serve replicas, identical pixels from either, direct streams and their
routes, and a replica killed mid-stream, through the proxy and direct.

The Ray tests start their own local Ray instance (2 CPUs, no dashboard, Serve's HTTP proxy and
the replicas' direct listeners on 127.0.0.1; Ray's own gRPC ports cannot be bound to loopback and
are token-authenticated) with a two-replica deployment of a tiny CPU model (size 8, channel
multiplier 1) and shut it down at the end of the module. A test that kills a replica first waits
for two to run (Serve replaces a killed one). Every wait is bounded; a faulthandler guard ends the
run with tracebacks if the module ever hangs (the full tier: ``--full``). The health routes, rendezvous hashing and the option
and flag checks run without Ray.
"""

import asyncio
import faulthandler
import json
import os
import socket
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

# LOOPBACK: Ray's node address is by default the machine's interface address; with this set (read when
# ray is imported) it is 127.0.0.1, so every connection between the test's Ray processes stays on loopback
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, websockets) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("websockets", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to test the HTTP routes")

import soat  # noqa: E402
from soat.bench.ray_fault import decode, kill_mid_stream, wait_for_replicas  # noqa: E402
from soat.bench.ray_scaling import free_port  # noqa: E402
from soat.errors import SoatError  # noqa: E402
from soat.serve.app import background_server  # noqa: E402
from soat.serve.client import Route, open_stream, ranked_replicas  # noqa: E402
from soat.serve.direct import rank  # noqa: E402
from soat.serve.protocol import unpack_message  # noqa: E402
from soat.serve.replica import ReplicaOptions, local_identity  # noqa: E402

needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="Ray Serve is not installed: pip install 'soat[ray]'")

SIZE = 8
TRUNCATION = 1.0  # psi = 1 needs no sigma_bar, which would cost each replica seconds of CPU
OPTIONS = ReplicaOptions(checkpoint="random:0", size=SIZE, channel_multiplier=1, truncation=TRUNCATION,
                         max_batch=4, window_s=0.01)
TIMEOUT = 30  # seconds any single wait may take on a loaded 2-core machine
APP = "soat-test"
KILLED: list[str] = []  # replicas this module's tests killed
GUARD_S = 300  # the whole module, Ray start and stop included; normally well under 90 s
CONFIG = Path(__file__).parents[1] / "serve" / "serve_config.yaml"


@pytest.fixture(scope="module")
def G():
    return soat.load("random:0", size=SIZE, channel_multiplier=1)


def expected(G, seed: int, x: int, w: int) -> np.ndarray:
    return soat.to_uint8(G.panorama_columns(seed, x, w, truncation=TRUNCATION))[0]


# ---- without Ray: options, flags, health routes ----------------------------------------------
def test_options_from_strings_and_errors():
    o = ReplicaOptions.from_mapping({"checkpoint": "random:3", "size": "16", "truncation": "0.5", "max_batch": 8})
    assert (o.checkpoint, o.size, o.truncation, o.max_batch, o.channel_multiplier) == ("random:3", 16, 0.5, 8, None)
    with pytest.raises(SoatError, match="unknown option 'replicas'; allowed: checkpoint"):
        ReplicaOptions.from_mapping({"replicas": 2})
    with pytest.raises(SoatError, match="size='big' must be an integer"):
        ReplicaOptions.from_mapping({"size": "big"})
    with pytest.raises(SoatError, match="max_batch=2.5 must be an integer"):
        ReplicaOptions.from_mapping({"max_batch": 2.5})
    with pytest.raises(SoatError, match="max_streams=0 must be an integer >= 1"):  # the shared words (checks.py)
        ReplicaOptions.from_mapping({"max_streams": "0"})
    assert ReplicaOptions.from_mapping({"direct_ports": "31000-31015"}).direct_ports == "31000-31015"
    for bad in ("31000", "9-2", "0-5", "1-70000", "on"):
        with pytest.raises(SoatError, match=f"direct_ports='{bad}' must be off, auto or LO-HI"):
            ReplicaOptions.from_mapping({"direct_ports": bad})


def test_rendezvous_hashing_spreads_seeds_and_moves_only_a_leaving_replicas():
    three = {f"r{k}": f"http://127.0.0.1:{31000 + k}" for k in range(3)}
    ranked = {seed: rank(seed, three) for seed in range(300)}
    assert all(sorted(r) == sorted(three.items()) for r in ranked.values())  # every replica, with its address
    counts = {name: sum(r[0][0] == name for r in ranked.values()) for name in three}
    assert all(60 <= n <= 140 for n in counts.values()), counts
    without_r1 = {name: url for name, url in three.items() if name != "r1"}
    for seed, r in ranked.items():
        # losing a replica moves only its seeds, each to the next of its ranking; excluding it is the same
        assert rank(seed, without_r1) == rank(seed, three, exclude=("r1",)) == [p for p in r if p[0] != "r1"]
    assert rank(5, three, exclude=tuple(three)) == [] and rank(5, {}) == []


@pytest.mark.parametrize("argv, needle", [
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--ray", "--replicas", "0"], "--replicas=0 must be >= 1"),
    (["--ray", "--autoscale", "3"], "--autoscale='3' must be MIN:MAX"),
    (["--ray", "--autoscale", "4:2"], "--autoscale='4:2' must be MIN:MAX"),
    (["--ray", "--gpus-per-replica", "0.5"], "--gpus-per-replica=0.5 needs --device cuda"),
    (["--ray", "--gpus-per-replica", "-1", "--device", "cuda"], "--gpus-per-replica=-1.0 must be >= 0"),
    (["--direct-ports", "auto"], "--direct-ports needs --ray"),
    (["--ray", "--direct-ports", "8000"], "direct_ports='8000' must be off, auto or LO-HI"),
])
def test_ray_flag_errors(capsys, argv, needle):
    from soat.cli import main
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("soat: error: ") and needle in err, err


def test_a_busy_direct_port_range_is_one_clear_error():
    from soat.serve.direct import DirectListener
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SoatError, match=f"no port of {port}-{port} is free on 127.0.0.1 .* give direct_ports a "
                                            f"wider range, or off"):
            asyncio.run(DirectListener.start(None, "127.0.0.1", (port, port)))


def test_autoscale_leaves_direct_streams_off_unless_asked():
    from soat.cli import build_parser
    from soat.serve.cli import _scale

    def direct_ports(*argv: str) -> str:
        args = build_parser().parse_args(["serve", "--ray", *argv])
        _scale(args)
        return ReplicaOptions.from_args(args).direct_ports

    assert direct_ports() == direct_ports("--replicas", "2") == "auto"
    assert direct_ports("--autoscale", "1:4") == "off"  # Serve's autoscaler counts only the streams it routes
    assert direct_ports("--autoscale", "1:4", "--direct-ports", "31000-31009") == "31000-31009"


def test_health_and_ready_without_ray(G):
    with background_server(OPTIONS.app(G, local_identity())) as base:
        health = httpx.get(base + "/api/health", timeout=TIMEOUT)
        ready = httpx.get(base + "/api/ready", timeout=TIMEOUT)
        png = httpx.get(base + "/api/panorama.png", params={"seed": 1, "x": 0, "w": 4}, timeout=TIMEOUT)
    me = local_identity()["replica"]
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["replica"] == me
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert health.headers["x-soat-replica"] == ready.headers["x-soat-replica"] == png.headers["x-soat-replica"] == me


# ---- on a local Ray instance ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_url():
    import ray
    from ray import serve

    from soat.serve.ray_app import application
    faulthandler.dump_traceback_later(GUARD_S, exit=True)  # last resort: a hung Ray never stalls CI
    port = free_port()
    # address="local": always a new instance of our own, even where a cluster is running
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="soat-test",
             object_store_memory=96 * 2 ** 20)
    assert ray.util.get_node_ip_address() == "127.0.0.1"  # loopback only (see LOOPBACK above)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(OPTIONS, replicas=2), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()


def served(base: str, path: str, params: dict | None = None) -> tuple[str, httpx.Response]:
    r = httpx.get(base + path, params=params, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.headers["x-soat-replica"], r


@pytest.mark.full
@needs_ray
def test_two_replicas_answer(ray_url):
    names = set()
    for _ in range(40):  # Serve picks a replica at random among idle ones
        name, r = served(ray_url, "/api/health")
        assert r.json()["replica"] == name and name.startswith("SERVE_REPLICA::soat-test#soat#")
        names.add(name)
        if len(names) == 2:
            break
    assert len(names) == 2, names
    name, r = served(ray_url, "/api/ready")
    assert r.json()["ready"] is True


@pytest.mark.full
@needs_ray
def test_split_ranges_from_different_replicas_agree(ray_url, G):
    seed, x, w = 11, 3, 40
    cuts = [x, x + 13, x + 29, x + w]
    ranges = [(x, x + w), *zip(cuts, cuts[1:])]
    by_replica: dict[tuple, dict] = {r: {} for r in ranges}
    for lo, hi in ranges:
        for _ in range(40):  # until both replicas have served this range
            name, r = served(ray_url, "/api/panorama.png", {"seed": seed, "x": lo, "w": hi - lo})
            by_replica[(lo, hi)][name] = decode(r.content)
            if len(by_replica[(lo, hi)]) == 2:
                break
    for key, images in by_replica.items():
        assert len(images) == 2, f"range {key} was served by one replica only"
        a, b = images.values()
        assert np.array_equal(a, b), f"range {key} differs between replicas"
    a_name, b_name = by_replica[ranges[0]]
    pieces = [by_replica[r][(a_name, b_name)[i % 2]] for i, r in enumerate(ranges[1:])]  # alternate replicas
    joined = np.concatenate(pieces, axis=1)
    assert np.array_equal(joined, by_replica[ranges[0]][a_name])
    assert np.array_equal(joined, expected(G, seed, x, w))


def routes(base: str, seeds) -> dict[int, list[tuple[str, str]]]:
    return {seed: asyncio.run(ranked_replicas(base, seed)) for seed in seeds}


@pytest.mark.full
@needs_ray
def test_routes_spread_seeds_stay_put_and_name_the_replica_they_reach(ray_url):
    first = routes(ray_url, range(40))
    assert all(len(r) == 2 for r in first.values()), first  # both replicas, best first
    assert len({r[0][0] for r in first.values()}) == 2, first  # both get seeds
    assert routes(ray_url, range(40)) == first  # whichever replica answers, a seed stays put
    for name, url in first[0]:
        direct, r = served(url, "/api/health")  # the address is that replica's own
        assert direct == r.json()["replica"] == name and url.startswith("http://127.0.0.1:")
    seed = 3
    assert asyncio.run(ranked_replicas(ray_url, seed, exclude=(first[seed][0][0],))) == first[seed][1:]
    assert asyncio.run(ranked_replicas(ray_url, seed, exclude=tuple(n for n, _ in first[seed]))) == []  # 503
    bad = httpx.get(ray_url + "/api/route", params={"seed": "x"}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "seed='x' is not an integer" in bad.json()["error"]


@pytest.mark.full
@needs_ray
def test_direct_batch_stream_is_in_order_and_matches(ray_url, G):
    seed, start, tile = 21, 5, 4

    async def go():
        async with open_stream(Route(ray_url, seed, direct=True), start, tile, "png", batch=3) as (ws, replica):
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["batch"] == 3
            await ws.send(json.dumps({"credit": 3}))
            messages = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)]
            return replica, ws.response.headers["x-soat-replica"], [f for m in messages for f in unpack_message(m)]

    replica, name, frames = asyncio.run(asyncio.wait_for(go(), 4 * TIMEOUT))
    assert replica == name == asyncio.run(ranked_replicas(ray_url, seed))[0][0]
    assert [(f[0], f[1]) for f in frames] == [(k, start + tile * k) for k in range(9)]
    got = np.concatenate([decode(f[4]) for f in frames], axis=1)
    assert np.abs(got.astype(int) - expected(G, seed, start, 9 * tile)).max() <= 1


@pytest.mark.full
@needs_ray
def test_the_viewer_streams_from_the_replica_its_route_names(ray_url):
    # the viewer tests' browser (skips, as that module does, without Playwright or Chromium)
    from test_viewer import CHROMIUM, FLAGS, WAIT_MS, WIDTH, sync_api, wait_frames
    seed = 8
    name, url = asyncio.run(ranked_replicas(ray_url, seed))[0]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=WAIT_MS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{ray_url}/?seed={seed}&width={WIDTH}", timeout=WAIT_MS)
            wait_frames(page, 3)
            routes = page.evaluate("window.soatViewer.routes")
            status = page.text_content("#status")
        finally:
            browser.close()
    assert routes == [{"url": url.replace("http", "ws", 1), "replica": name}] and not errors, (routes, errors)
    assert "unexpected frame" not in status, status


@pytest.mark.full
@needs_ray
def test_no_direct_route_falls_back_to_the_proxy(ray_url):
    route = Route(ray_url, 2, direct=True)
    for name, _ in asyncio.run(ranked_replicas(ray_url, 2)):
        route.lose(name)  # as if neither replica's port could be reached

    async def go():
        async with open_stream(route, 0, 4, "png") as (ws, replica):
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "hello"
            return replica

    assert asyncio.run(asyncio.wait_for(go(), 4 * TIMEOUT)) is None


@pytest.mark.full
@needs_ray
@pytest.mark.parametrize("direct", [False, True], ids=["through the proxy", "direct"])
def test_killing_a_replica_mid_stream_resumes_without_gap(ray_url, G, direct):
    wait_for_replicas(ray_url, 2, 4 * TIMEOUT, gone=KILLED)  # Serve replaces one an earlier test killed
    seed, start = 5 + direct, 7
    drill = asyncio.run(asyncio.wait_for(kill_mid_stream(ray_url, seed, start, tile=4, total=96, kill_after=3,
                                                         timeout=TIMEOUT, direct=direct), 4 * TIMEOUT))
    replicas = drill.replicas
    KILLED.append(replicas[0])
    assert drill.closes == 1 and len(replicas) == 2 and replicas[0] != replicas[1], (drill.closes, replicas)
    assert drill.direct == [direct, direct]  # direct: on to the next replica of the route
    assert drill.frames[0][0] == start and drill.contiguous, [col for col, _, _ in drill.frames]
    got = np.concatenate([pixels for _, _, pixels in drill.frames], axis=1)
    # stream spans are batched: at most one level off the batch-1 reference in the last fp32 bits
    assert np.abs(got.astype(int) - expected(G, seed, start, got.shape[1])).max() <= 1
    for _ in range(5):  # the survivor keeps serving
        name, _ = served(ray_url, "/api/health")
        assert name != replicas[0]


@pytest.mark.full
@needs_ray
def test_serve_config_file_builds():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from soat.serve.ray_app import build_app
    config = ServeDeploySchema(**yaml.safe_load(CONFIG.read_text()))
    (app,) = config.applications
    assert app.import_path == "soat.serve.ray_app:build_app"
    assert [d.name for d in app.deployments] == ["soat"]
    build_app(app.args)  # every arg is a ReplicaOptions field of the right type
    with pytest.raises(SoatError, match="unknown option"):
        build_app({**app.args, "gpus": 1})

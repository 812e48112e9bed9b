"""The review app (`dvclust serve`): every API endpoint with Starlette's test client, bad input,
and one session in a real browser (Playwright driving the system's Chromium)."""
import csv
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, cli
from dvclust.labelling import load_names, read_corrections, set_names
from dvclust.rundir import run_source

starlette_testclient = pytest.importorskip("starlette.testclient")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """Three kinds of 16x16 PNG in a folder (so that images have files), clustered into K = 4."""
    from PIL import Image

    base = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    for c in range(3):
        (base / "imgs" / f"kind{c}").mkdir(parents=True)
        for j in range(20):
            x = rng.uniform(0, 25, size=(16, 16))
            r = 2 + 5 * c
            x[r:r + 4, r:r + 4] = 230
            Image.fromarray(x.astype(np.uint8)).save(base / "imgs" / f"kind{c}" / f"<b>{j}.png")
    sets = [a for k, v in {**FAST, "batch_size": 16, "pretrain_epochs": 6}.items()
            for a in ("--set", f"{k}={v}")]
    cli("fit", base / "imgs", "-k", 4, "--out", base / "run", "-q", *sets)
    return base / "run"


@pytest.fixture
def run(folder_run, tmp_path):
    """A fresh copy of the run for each test (the app writes names and corrections)."""
    dst = tmp_path / "run"
    shutil.copytree(folder_run, dst)
    return dst


def client(run, **kw):
    from dvclust.serve import make_app

    return starlette_testclient.TestClient(make_app(run, **kw), raise_server_exceptions=False)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_api_reads(run):
    c = client(run)
    doc = c.get("/api/clusters").json()
    assert doc["n"] == 60 and doc["k"] == 4 and sum(x["size"] for x in doc["clusters"]) == 60
    big = max(doc["clusters"], key=lambda x: x["size"])
    assert big["typical"] and all(isinstance(i, int) for i in big["typical"])
    page = c.get(f"/api/clusters/{big['id']}/images?offset=0&limit=5").json()
    assert page["total"] == big["size"] and len(page["images"]) == min(5, big["size"])
    assert [r["index"] for r in page["images"][:len(big["typical"])]] == big["typical"][:5]
    everyone = c.get(f"/api/clusters/{big['id']}/images?limit=500").json()["images"]
    assert len({r["index"] for r in everyone}) == big["size"]  # typical ones are not repeated
    assert c.get("/api/summary").json() == {"n": 60, "corrected": 0, "cluster": 0,
                                            "propagated": 0, "none": 60}
    r = c.get("/api/images/0/thumb")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    full = c.get("/api/images/0/full")
    src = _rows(run / "labels.csv")[0]["source"]
    assert full.content == (Path(run_source(run).path) / src).read_bytes()  # the file itself
    q = c.get("/api/review?limit=10").json()
    assert q["total"] >= 10 and len(q["images"]) == 10 and q["images"][0]["reason"]
    page = c.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert c.get("/static/app.js").status_code == 200


def test_label_studio_tasks_can_take_their_images_from_the_app(run, tmp_path):
    """`export --format labelstudio --image-url URL`: each task's image is the app's URL of its
    row, which serves that image's own file; no image files are written."""
    import json

    cli("name", run, "0=a", "1=a", "2=b")
    cli("export", run, "--format", "labelstudio", "--out", tmp_path / "ls",
        "--image-url", "http://127.0.0.1:8765/")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert not (tmp_path / "ls" / "images").exists()
    c, root = client(run), Path(run_source(run).path)
    by_source = {t["data"]["source"]: t["data"]["image"] for t in tasks}
    for src, url in list(by_source.items())[::17]:
        assert url.startswith("http://127.0.0.1:8765/api/images/")
        assert c.get(url.removeprefix("http://127.0.0.1:8765")).content == (root / src).read_bytes()
    from dvclust import DVClustError
    from dvclust.curate import export

    with pytest.raises(DVClustError, match=r"--image-url '127.0.0.1:8765': expected the http"):
        export(run, "labelstudio", tmp_path / "x", image_url="127.0.0.1:8765")


def test_api_writes_what_the_cli_reads_and_undo(run):
    c = client(run)
    assert c.post("/api/names", json={"cluster": 0, "name": "square"}).status_code == 200
    assert c.post("/api/names", json={"cluster": 1, "name": "square"}).status_code == 200
    assert c.post("/api/names", json={"cluster": 2, "mixed": True}).status_code == 200
    names = load_names(run)
    assert names.names == {0: "square", 1: "square"} and names.mixed == {2}
    assert c.post("/api/corrections", json={"indices": [3, 4, 5], "label": "odd"}).status_code == 200
    assert c.post("/api/corrections", json={"indices": [6], "exclude": True}).status_code == 200
    assert read_corrections(run) == {3: "odd", 4: "odd", 5: "odd", 6: "excluded"}
    s = c.get("/api/summary").json()
    cli("labels", run)
    how = [r["how"] for r in _rows(run / "self_labels.csv")]
    assert s == {"n": 60, **{h: how.count(h) for h in ("corrected", "cluster", "propagated", "none")}}
    set_names(run, labels_from="neighbours")  # counted as `labels` counts them in either mode
    s = c.get("/api/summary").json()
    cli("labels", run)
    how = [r["how"] for r in _rows(run / "self_labels.csv")]
    assert s == {"n": 60, **{h: how.count(h) for h in ("corrected", "cluster", "propagated", "none")}}
    assert how.count("cluster") == 2  # the two named clusters speak through one image each
    set_names(run, labels_from="cluster")
    assert c.get("/api/clusters").json()["names_in_use"] == ["excluded", "odd", "square"]
    assert c.post("/api/undo", json={}).json()["undo"] == 4       # the exclusion is gone
    assert read_corrections(run) == {3: "odd", 4: "odd", 5: "odd"}
    for _ in range(4):
        c.post("/api/undo", json={})
    assert not (run / "names.json").exists() and not (run / "corrections.csv").exists()
    assert c.post("/api/undo", json={}).status_code == 409
    r = c.post("/api/labels", json={"export": "csv"})
    assert r.status_code == 200 and (run / "export" / "labels_named.csv").exists()


def test_app_shows_the_labels_that_labels_writes_and_confirms_the_next_looks(run):
    """Every gallery shows what `dvclust labels` will write, propagated labels included; `Look
    next` lists `dvclust next`'s images, and confirming them records them as looked at."""
    c = client(run)
    sizes = np.bincount([int(r["cluster"]) for r in _rows(run / "labels.csv")], minlength=4)
    a, b = np.argsort(-sizes)[:2]
    for cid, name in ((a, "big"), (b, "second")):
        assert c.post("/api/names", json={"cluster": int(cid), "name": name}).status_code == 200
    assert c.post("/api/names", json={"labels_from": "neighbours"}).json()["done"] == \
        "labels from neighbours"
    assert c.get("/api/clusters").json()["labels_from"] == "neighbours"
    shown = _shown(c)
    cli("labels", run)
    assert shown == {int(r["index"]): (r["label"], r["how"]) for r in _rows(run / "self_labels.csv")}
    assert sum(h == "propagated" for _, h in shown.values()) == 58  # two named images speak

    nxt = c.get("/api/next?limit=5").json()["images"]
    assert [r["index"] for r in nxt] == [int(r["index"]) for r in _rows(_next_csv(run, 5))]
    assert all(r["reason"].startswith("stands for ") and r["how"] == "propagated" for r in nxt)
    c.post("/api/corrections", json={"indices": [nxt[0]["index"]], "label": "odd"})
    now = _shown(c)  # the correction may have moved its neighbours' votes: confirmed as shown now
    r = c.post("/api/corrections", json={"indices": [r["index"] for r in nxt], "confirm": True})
    assert r.json()["done"] == "4 label(s) confirmed"  # the corrected one is kept as it is
    assert read_corrections(run) == {nxt[0]["index"]: "odd",
                                     **{r["index"]: now[r["index"]][0] for r in nxt[1:]}}
    again = {r["index"] for r in c.get("/api/next?limit=5").json()["images"]}
    assert len(again) == 5 and not again & {r["index"] for r in nxt}  # looked at: not offered again
    assert c.post("/api/corrections", json={"indices": [nxt[1]["index"]], "confirm": True}
                  ).status_code == 409
    c.post("/api/undo", json={})
    assert len(read_corrections(run)) == 1


def _shown(c):
    """Every image's (label, how) as the cluster galleries show them."""
    return {r["index"]: (r["label"], r["how"]) for cid in range(4)
            for r in c.get(f"/api/clusters/{cid}/images?limit=500").json()["images"]}


def _next_csv(run, n):
    cli("next", run, "--n", n)
    return run / "next.csv"


@pytest.mark.parametrize("method,path,body,status", [
    ("get", "/api/clusters/99/images", None, 404),
    ("get", "/api/clusters/abc/images", None, 400),
    ("get", "/api/clusters/0/images?limit=100000", None, 400),
    ("get", "/api/clusters/0/images?offset=-1", None, 400),
    ("get", "/api/images/9999/thumb", None, 404),
    ("get", "/api/images/..%2F..%2Fetc%2Fpasswd/thumb", None, 404),
    ("get", "/api/images/-1/full", None, 404),
    ("get", "/static/..%2F__init__.py", None, 404),
    ("post", "/api/names", {"cluster": 9, "name": "x"}, 404),
    ("post", "/api/names", {"cluster": 0, "name": "../x"}, 400),
    ("post", "/api/names", {"cluster": 0, "name": 5}, 400),
    ("post", "/api/names", {"cluster": 0, "mixed": "yes"}, 400),
    ("post", "/api/names", [1, 2], 400),
    ("post", "/api/names", {"labels_from": "votes"}, 400),
    ("post", "/api/corrections", {"indices": [1], "confirm": True}, 409),  # nothing named yet
    ("get", "/api/next?limit=0x", None, 400),
    ("post", "/api/corrections", {"indices": [1, 999], "label": "x"}, 404),
    ("post", "/api/corrections", {"indices": "1", "label": "x"}, 400),
    ("post", "/api/corrections", {"indices": [], "label": "x"}, 400),
    ("post", "/api/corrections", {"indices": [True], "label": "x"}, 400),
    ("post", "/api/labels", {"export": "zip"}, 400),
])
def test_api_refuses_bad_input_with_a_json_error(run, method, path, body, status):
    c = client(run)
    r = getattr(c, method)(path, **({} if body is None else {"json": body}))
    assert r.status_code == status, r.text
    if path.startswith("/api"):
        assert r.json()["error"] and "Traceback" not in r.text
    assert not (run / "names.json").exists() and not (run / "corrections.csv").exists()


def test_api_refuses_malformed_and_oversized_bodies(run):
    c = client(run)
    r = c.post("/api/names", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    big = b'{"cluster": 0, "name": "' + b"a" * (2 << 20) + b'"}'
    r = c.post("/api/names", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]


def test_a_token_guards_a_non_local_server(run):
    c = client(run, token="s3cret")
    assert c.get("/api/clusters").status_code == 403
    assert c.get("/api/clusters?token=wrong").status_code == 403
    assert c.get("/?token=s3cret").status_code == 200          # and sets the cookie
    assert c.get("/api/clusters").status_code == 200


def test_serve_warns_and_needs_a_token_off_localhost(run, monkeypatch, caplog):
    import logging

    import uvicorn

    from dvclust import serve as serve_mod

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(host=host, app=app))
    caplog.set_level(logging.INFO, logger="dvclust")
    serve_mod.serve(run, host="0.0.0.0", port=1)
    assert "warning" in caplog.text and "?token=" in caplog.text and seen["host"] == "0.0.0.0"
    caplog.clear()
    serve_mod.serve(run, port=1)
    assert "token" not in caplog.text and seen["host"] == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(run):
    import uvicorn

    from dvclust.serve import make_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(run), host="127.0.0.1", port=port,
                                        log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", run
    srv.should_exit = True
    t.join(10)


def test_review_session_in_a_real_browser(server, tmp_path):
    """Open the grid, name two clusters the same, move three images to another name, reload,
    confirm the Look next batch, switch labels_from, and check the files the CLI reads and
    `dvclust labels`."""
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    url, run = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector(".card")
        assert page.locator(".card").count() == 4
        for cid in (0, 1):
            card = page.locator(f'.card[data-cluster="{cid}"]')
            card.get_by_placeholder("name").fill("square <i>")
            card.get_by_role("button", name="Save name").click()
            page.wait_for_selector(f'.card[data-cluster="{cid}"] h3 a:text-is("square <i>")')
        page.screenshot(path=str(tmp_path / "grid.png"))
        # the largest cluster: which ids a fit leaves empty varies with the library versions
        sizes = np.bincount([int(r["cluster"]) for r in _rows(run / "labels.csv")])
        page.goto(url + f"/#/cluster/{int(sizes.argmax())}")
        page.wait_for_selector(".tile")
        tiles = page.locator(".tile")
        picked = [int(tiles.nth(i).get_attribute("data-index")) for i in range(3)]
        for i in range(3):
            tiles.nth(i).locator("img").click()
        assert page.locator(".tile.selected").count() == 3
        page.get_by_label("move the selected images to").fill("odd one")
        page.get_by_role("button", name="Move selected").click()
        page.wait_for_selector("#status:text-matches('saved: 3 image')")
        assert page.locator(".tile.selected").count() == 0        # the selection is spent
        for i in picked:
            assert "odd one (corrected)" in page.locator(f'.tile[data-index="{i}"]').inner_text()
        page.reload()
        page.wait_for_selector(".tile")
        caps = {int(page.locator(".tile").nth(i).get_attribute("data-index")):
                page.locator(".tile").nth(i).inner_text() for i in range(page.locator(".tile").count())}
        assert all("odd one (corrected)" in caps[i] for i in picked)
        page.screenshot(path=str(tmp_path / "cluster.png"))
        # Look next: the images of the parts no one has looked at, confirmed as they are shown
        page.goto(url + "/#/next")
        page.wait_for_selector("h2:text-matches('^Look next') >> xpath=.. >> .tile")
        offered = [int(t.get_attribute("data-index")) for t in page.locator(".tile").all()]
        page.screenshot(path=str(tmp_path / "next.png"))
        page.get_by_role("button", name="Confirm all shown").click()
        page.wait_for_selector("#status:text-matches('label.s. confirmed$')")
        page.goto(url + "/")
        page.get_by_label("a named cluster labels").select_option("neighbours")
        page.wait_for_selector("#status:text-is('saved: labels from neighbours')")
        progress = page.locator("#progress").inner_text()
        page.screenshot(path=str(tmp_path / "grid_after.png"))
        browser.close()
    assert not errors, errors
    assert load_names(run).names == {0: "square <i>", 1: "square <i>"}
    assert load_names(run).labels_from == "neighbours"
    confirmed = {i: lbl for i, lbl in read_corrections(run).items() if i not in picked}
    assert set(confirmed) == set(offered) - set(picked) and len(confirmed) > 10
    assert {i: lbl for i, lbl in read_corrections(run).items() if i in picked} == \
        {i: "odd one" for i in picked}
    out = cli("labels", run)
    rows = _rows(run / "self_labels.csv")
    assert all(rows[i]["label"] == "odd one" and rows[i]["how"] == "corrected" for i in picked)
    named = sum(r["how"] == "cluster" for r in rows)
    assert f"{named} by a cluster name, {len(read_corrections(run))} corrected" in progress
    assert str(named) in out

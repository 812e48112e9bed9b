"""A round trip through a real Label Studio server: `dvclust export --format labelstudio`, a
project made from the exported label_config.xml, the tasks imported, their images served by
Label Studio's local-files storage, annotations made through its API, its JSON export read back
by `dvclust import-labels`.

Label Studio lives in its own virtual environment (its pins clash with ours): .ci/run installs it
and sets DVCLUST_LABEL_STUDIO to its `label-studio` executable; without it the test skips.
"""
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, cli
from dvclust.labelling import read_corrections

LS = os.environ.get("DVCLUST_LABEL_STUDIO") or shutil.which("label-studio")
TOKEN = "0123456789abcdef0123456789abcdef01234567"
pytestmark = pytest.mark.skipif(not LS, reason="Label Studio not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A fresh Label Studio on 127.0.0.1 serving local files under a temporary document root."""
    import httpx

    root = tmp_path_factory.mktemp("ls_root")
    data = tmp_path_factory.mktemp("ls_data")
    port = _free_port()
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data),
               LABEL_STUDIO_USERNAME="dvclust@example.com", LABEL_STUDIO_PASSWORD="dvclust-test",
               LABEL_STUDIO_USER_TOKEN=TOKEN, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(root), LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true")
    env.pop("HOST", None)
    log = open(data / "server.log", "w")
    proc = subprocess.Popen([LS, "start", "--no-browser", "--internal-host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=data, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Token {TOKEN}"})
    t0 = time.time()
    try:
        while True:  # the first start migrates its database: minutes on a small machine
            if proc.poll() is not None:
                pytest.fail("Label Studio exited:\n" + (data / "server.log").read_text()[-3000:])
            try:
                if client.get("/api/projects").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() - t0 > 900:
                pytest.fail("Label Studio did not answer within 15 min:\n"
                            + (data / "server.log").read_text()[-3000:])
            time.sleep(2)
        yield client, root
    finally:
        client.close()
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def _run(root: Path) -> Path:
    """A small finished run over PNG files that lie under Label Studio's document root."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / "imgs" / f"k{c}").mkdir(parents=True)
        for j in range(12):
            x = rng.uniform(0, 25, size=(16, 16))
            x[2 + 7 * c:6 + 7 * c, 2:14] = 230
            Image.fromarray(x.astype(np.uint8)).save(root / "imgs" / f"k{c}" / f"scan #{j}.png")
    sets = [a for k, v in {**FAST, "batch_size": 8}.items() for a in ("--set", f"{k}={v}")]
    cli("fit", root / "imgs", "-k", 2, "--out", root / "run", "-q", *sets)
    return root / "run"


def test_label_studio_round_trip(label_studio):
    client, root = label_studio
    run = _run(root)
    cli("name", run, "0=top", "1=bottom")
    cli("export", run, "--format", "labelstudio", "--out", root / "ls", "--document-root", root)
    config = (root / "ls" / "label_config.xml").read_text()
    r = client.post("/api/projects", json={"title": "dvclust round trip", "label_config": config})
    assert r.status_code == 201, r.text
    project = r.json()["id"]
    # the Local Storage that lets Label Studio serve files of that folder (README, step 7)
    r = client.post("/api/storages/localfiles", json={"project": project, "title": "scans",
                                                      "path": str(root / "imgs"),
                                                      "use_blob_urls": False})
    assert r.status_code == 201, r.text
    tasks = json.loads((root / "ls" / "tasks.json").read_text())
    r = client.post(f"/api/projects/{project}/import", json=tasks)
    assert r.status_code == 201, r.text
    listed = client.get("/api/tasks", params={"project": project, "page_size": 100}).json()
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(listed) == len(tasks) == 24
    by_source = {t["data"]["source"]: t for t in listed}
    # Label Studio serves every task's image from the document root: the URLs resolve
    for t in listed[:3]:
        img = client.get(t["data"]["image"])
        src = t["data"]["source"]
        assert img.status_code == 200, (t["data"]["image"], img.text[:300])
        assert img.content == (root / "imgs" / src).read_bytes()
    # a person corrects two images in Label Studio: each gets the other name than predicted
    predicted = {t["data"]["source"]: t["predictions"][0]["result"][0]["value"]["choices"][0]
                 for t in tasks}
    fixed = {s: {"top": "bottom", "bottom": "top"}[predicted[s]] for s in sorted(by_source)[:2]}
    for src, label in fixed.items():
        r = client.post(f"/api/tasks/{by_source[src]['id']}/annotations", json={"result": [
            {"from_name": "label", "to_name": "image", "type": "choices",
             "value": {"choices": [label]}}]})
        assert r.status_code == 201, r.text
    r = client.get(f"/api/projects/{project}/export", params={"exportType": "JSON"})
    assert r.status_code == 200, r.text[:500]
    (root / "export.json").write_bytes(r.content)
    # the predictions dvclust exported come back from Label Studio as they went in (its export
    # lists them by id; the predictions API gives their contents)
    exported = json.loads(r.content)   # the annotated tasks (Label Studio's default export)
    assert sorted(t["data"]["source"] for t in exported) == sorted(fixed)
    for t in exported:
        ids = [p if isinstance(p, int) else p["id"] for p in t["predictions"]]
        pred = client.get(f"/api/predictions/{ids[0]}").json()
        assert pred["result"][0]["value"]["choices"][0] == predicted[t["data"]["source"]]
    out = cli("import-labels", run, root / "export.json")
    assert "2 annotated image(s)" in out
    lab = {r["source"]: int(r["index"]) for r in _rows(run / "labels.csv")}
    assert read_corrections(run) == {lab[s]: label for s, label in fixed.items()}
    cli("labels", run)
    rows = {r["source"]: r for r in _rows(run / "self_labels.csv")}
    assert all(rows[s]["how"] == "corrected" and rows[s]["label"] == fixed[s] for s in fixed)


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_label_studio_keeps_the_review_app_urls(label_studio):
    """Tasks exported with --image-url import as they are: Label Studio's page loads each image
    from the review app (`dvclust serve`), which answers that URL with the image's own file."""
    from starlette.testclient import TestClient

    from dvclust.serve import make_app

    client, root = label_studio
    run = root / "run" if (root / "run").exists() else _run(root)
    cli("export", run, "--format", "labelstudio", "--out", root / "ls_app",
        "--image-url", "http://127.0.0.1:8765")
    config = (root / "ls_app" / "label_config.xml").read_text()
    r = client.post("/api/projects", json={"title": "dvclust via the app", "label_config": config})
    assert r.status_code == 201, r.text
    project = r.json()["id"]
    tasks = json.loads((root / "ls_app" / "tasks.json").read_text())
    assert client.post(f"/api/projects/{project}/import", json=tasks).status_code == 201
    listed = client.get("/api/tasks", params={"project": project, "page_size": 100}).json()
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert sorted(t["data"]["image"] for t in listed) == sorted(t["data"]["image"] for t in tasks)
    app = TestClient(make_app(run))
    for t in listed[:3]:
        got = app.get(t["data"]["image"].removeprefix("http://127.0.0.1:8765"))
        assert got.status_code == 200 and got.content == (root / "imgs" / t["data"]["source"]).read_bytes()

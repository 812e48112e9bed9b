"""`dvclust serve RUN`: the review app, a local web page over one run folder, to name clusters
(several may share a name), mark them mixed, choose how a named cluster labels its images
(names.json's labels_from), look at the images `dvclust next` suggests and confirm or move them,
move images to another name, exclude them, and undo.

Every action goes through the files the CLI reads and writes (names.json, corrections.csv, via
labelling), so `dvclust labels` and the exports give what the app shows. The page is plain
HTML/JS shipped in the package (static/); the JSON API behind it is under /api (README, "Review
app"). Images are addressed by their row in labels.csv, never by a path from the URL, and are
served from the run's own data: nothing else on the disk can be read through the app.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import labelling
from ..curate import data_root, export, original_file, review_queue
from ..data.images import png_bytes
from ..errors import DVClustError
from ..io import write_text_atomic
from ..labelling import HOW, add_corrections, load_names, read_corrections, set_names, \
    write_self_labels
from ..rundir import read_labels, read_run_config, run_source

STATIC = Path(__file__).parent / "static"
EXCLUDED = "excluded"           # the label `exclude` gives: a correction like any other
MAX_BODY = 1 << 20              # bytes of JSON a request may send
PAGE_LIMIT = 500                # images one gallery request may ask for
TYPICAL_STRIP = 8
UNDO_DEPTH = 100
BROWSER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".gif": "image/gif", ".bmp": "image/bmp", ".webp": "image/webp"}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ReviewRun:
    """One run as the app sees it: labels.csv read once, the galleries' order computed once,
    names and corrections read from their files on every request (the CLI may change them too)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.lab = read_labels(self.run_dir)
        self.k = read_run_config(self.run_dir)[0].n_clusters
        self.n = len(self.lab["cluster"])
        self.source = run_source(self.run_dir)
        self.data = self.source.load(verbose=False)
        self.root = data_root(self.source)
        if len(self.data) != self.n:
            raise DVClustError(f"{self.run_dir}: labels.csv has {self.n} rows but the data "
                               f"({self.source.path}) now holds {len(self.data)} images")
        self.clusters = self.lab["cluster"].astype(int)
        self.conf = self.lab["confidence"].astype(float)
        self.outlier = self.lab["outlier_score"].astype(float)
        self.sizes = np.bincount(self.clusters, minlength=self.k)
        self.mean_conf = np.bincount(self.clusters, self.conf, self.k) / np.maximum(self.sizes, 1)
        # Galleries: the cluster's typical images first, then the rest, most confident first.
        self.typical = {c: [] for c in range(self.k)}
        for row in labelling.typical(self.run_dir, TYPICAL_STRIP):
            self.typical[row["cluster"]].append(row["index"])
        order = np.lexsort((-self.conf, self.clusters))
        self.starts = np.searchsorted(self.clusters[order], np.arange(self.k + 1))
        first = np.zeros(self.n, bool)
        for idx in self.typical.values():
            first[idx] = True
        for c in range(self.k):
            part = order[self.starts[c]:self.starts[c + 1]]
            order[self.starts[c]:self.starts[c + 1]] = np.concatenate([
                np.asarray(self.typical[c], dtype=order.dtype), part[~first[part]]])
        self.order = order
        self.lock = threading.Lock()
        self.undo: list[tuple[str, dict[str, bytes | None]]] = []
        self._cache: dict[str, tuple[bytes, object]] = {}
        self._z = None

    # ---- reading --------------------------------------------------------------------------------
    def cluster_id(self, text) -> int:
        try:
            c = int(text)
        except (TypeError, ValueError):
            raise ApiError(400, f"cluster {text!r} is not a cluster id") from None
        if not 0 <= c < self.k:
            raise ApiError(404, f"unknown cluster {c}; this run has clusters 0..{self.k - 1}")
        return c

    def image_id(self, text) -> int:
        t = str(text)
        if not t.isdigit() or int(t) >= self.n:
            raise ApiError(404, f"no image {t!r} in this run (images are 0..{self.n - 1})")
        return int(t)

    def state(self) -> bytes:
        """A digest of names.json and corrections.csv: what every label depends on (their contents,
        not their mtimes, which two writes within a clock tick share)."""
        h = hashlib.sha1()
        for f in ("names.json", "corrections.csv"):
            h.update(_read(self.run_dir / f) or b"-")
            h.update(b"\0")
        return h.digest()

    def cached(self, what: str, compute):
        """compute(), kept until names.json or corrections.csv change."""
        key = self.state()
        if what not in self._cache or self._cache[what][0] != key:
            self._cache[what] = key, compute()
        return self._cache[what][1]

    def direct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every image's label and how before propagation (labelling.direct_labels), and the rows
        labelled so (the ones propagation votes from)."""
        def compute():
            label, how = labelling.direct_labels(self.clusters, self.conf, load_names(self.run_dir),
                                                 read_corrections(self.run_dir), self.k)
            return label, how, np.flatnonzero(how != "none")
        return self.cached("direct", compute)

    def clusters_doc(self) -> dict:
        names = load_names(self.run_dir)
        return {"n": self.n, "k": self.k, "labels_from": names.labels_from,
                "names_in_use": self.names_in_use(names),
                "clusters": [{"id": c, "name": names.names.get(c), "mixed": c in names.mixed,
                              "size": int(self.sizes[c]),
                              "confidence": round(float(self.mean_conf[c]), 4),
                              "typical": self.typical[c]} for c in range(self.k)]}

    def names_in_use(self, names=None) -> list[str]:
        names = names or load_names(self.run_dir)
        return sorted(set(names.names.values()) | set(read_corrections(self.run_dir).values()))

    def image_rows(self, idx) -> list[dict]:
        """The rows `idx` with the labels `dvclust labels` would give them: the same propagation
        (same neighbours, same seed), run for these rows only."""
        idx = np.asarray(idx, dtype=np.int64)
        every_label, every_how, known = self.direct()
        label, how = every_label[idx], every_how[idx].copy()
        rest = np.flatnonzero(how == "none")
        if len(rest) and len(known):
            if self._z is None:
                self._z = labelling.latents(self.run_dir)
            label[rest], _ = labelling.propagate(self._z, known, every_label[known], idx[rest])
            how[rest] = "propagated"
        return [{"index": int(i), "source": str(self.lab["source"][i]),
                 "cluster": int(self.clusters[i]), "confidence": round(float(self.conf[i]), 4),
                 "outlier_score": round(float(self.outlier[i]), 4), "label": lbl, "how": h}
                for i, lbl, h in zip(idx, label, how)]

    def gallery(self, c: int, offset: int, limit: int) -> dict:
        part = self.order[self.starts[c]:self.starts[c + 1]]
        return {"cluster": c, "total": len(part), "offset": offset,
                "images": self.image_rows(part[offset:offset + limit])}

    def review(self, offset: int, limit: int) -> dict:
        rows = self.cached("review", lambda: review_queue(self.run_dir, 200))
        out = self.image_rows([r["index"] for r in rows[offset:offset + limit]])
        for r, q in zip(out, rows[offset:offset + limit]):  # the confidence it was ranked by
            r["reason"], r["confidence"] = q["reason"], round(q["confidence"], 4)
        return {"total": len(rows), "offset": offset, "images": out}

    def next_looks(self, n: int) -> dict:
        """The n images to label next (`dvclust next`), recomputed once a label changes."""
        rows = self.cached(f"next {n}", lambda: labelling.next_looks(self.run_dir, n, lab=self.lab))
        out = self.image_rows([r["index"] for r in rows])
        for r, q in zip(out, rows):
            r["reason"] = f"stands for {q['cell_size']}"
        return {"total": len(out), "offset": 0, "images": out}

    def summary(self) -> dict:
        """How many images are labelled which way, as `dvclust labels` would count them,
        without running the propagation (every image left is propagated once one is labelled)."""
        how = self.direct()[1]
        counts = {h: int((how == h).sum()) for h in HOW}
        if counts["corrected"] + counts["cluster"]:
            counts["propagated"], counts["none"] = counts["none"], 0
        return {"n": self.n, **counts}

    def thumbnail(self, i: int) -> bytes:
        return png_bytes(self.data.images[i])

    def original(self, i: int) -> Path | None:
        """The image's own file, where there is one (curate.original_file) a browser can show."""
        path = original_file(self.root, self.data, str(self.lab["source"][i]), i)
        return path if path is not None and path.suffix.lower() in BROWSER_TYPES \
            and path.is_file() else None

    # ---- writing --------------------------------------------------------------------------------
    def act(self, what: str, fn) -> dict:
        """Run one action that writes names.json / corrections.csv, remembering the files as they
        were so that `undo` can put them back."""
        with self.lock:
            before = {f: _read(self.run_dir / f) for f in ("names.json", "corrections.csv")}
            fn()
            self.undo = (self.undo + [(what, before)])[-UNDO_DEPTH:]
            return {"done": what, "undo": len(self.undo)}

    def undo_last(self) -> dict:
        with self.lock:
            if not self.undo:
                raise ApiError(409, "nothing to undo")
            what, before = self.undo.pop()
            for f, content in before.items():
                path = self.run_dir / f
                if content is None:
                    path.unlink(missing_ok=True)
                else:
                    write_text_atomic(path, content.decode("utf-8"))
            return {"undone": what, "undo": len(self.undo)}


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


# ---- the HTTP side ------------------------------------------------------------------------------
async def _body(request: Request) -> dict:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return doc


def _int_param(request: Request, key: str, default: int, hi: int) -> int:
    v = request.query_params.get(key, str(default))
    if not v.isdigit() or int(v) > hi:
        raise ApiError(400, f"{key}={v!r}: expected an integer 0..{hi}")
    return int(v)


def _string(doc: dict, key: str, allow_empty: bool = False) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise ApiError(400, f"'{key}' must be a{'' if allow_empty else ' non-empty'} string")
    return v


class Handlers:
    """The HTTP endpoints over one ReviewRun: parse and check the request, call the run, answer
    JSON. Errors become JSON with a status, never a traceback."""

    def __init__(self, run: ReviewRun):
        self.run = run

    async def clusters(self, request):
        return JSONResponse(self.run.clusters_doc())

    async def cluster_images(self, request):
        c = self.run.cluster_id(request.path_params["cid"])
        return JSONResponse(self.run.gallery(c, _int_param(request, "offset", 0, self.run.n),
                                        _int_param(request, "limit", 100, PAGE_LIMIT)))

    async def review(self, request):
        return JSONResponse(self.run.review(_int_param(request, "offset", 0, self.run.n),
                                       _int_param(request, "limit", 100, PAGE_LIMIT)))

    async def next_looks(self, request):
        return JSONResponse(self.run.next_looks(max(1, _int_param(request, "limit", 50, PAGE_LIMIT))))

    async def summary(self, request):
        return JSONResponse(self.run.summary())

    async def thumb(self, request):
        i = self.run.image_id(request.path_params["image"])
        return Response(self.run.thumbnail(i), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def full(self, request):
        i = self.run.image_id(request.path_params["image"])
        path = self.run.original(i)
        if path is None:
            return Response(self.run.thumbnail(i), media_type="image/png")
        return FileResponse(path, media_type=BROWSER_TYPES[path.suffix.lower()])

    async def names(self, request):
        doc = await _body(request)
        if "labels_from" in doc:
            how = doc["labels_from"]
            if how not in labelling.LABELS_FROM:
                raise ApiError(400, f"'labels_from' must be one of {', '.join(labelling.LABELS_FROM)}")
            return JSONResponse(self.run.act(f"labels from {how}",
                                             lambda: set_names(self.run.run_dir, labels_from=how)))
        c = self.run.cluster_id(doc.get("cluster"))
        if "mixed" in doc:
            if not isinstance(doc["mixed"], bool):
                raise ApiError(400, "'mixed' must be true or false")
            mixed = doc["mixed"]
            return JSONResponse(self.run.act(
                f"cluster {c} {'marked' if mixed else 'no longer'} mixed",
                lambda: set_names(self.run.run_dir, mixed=[c] if mixed else [],
                                  unmixed=[] if mixed else [c])))
        name = _string(doc, "name", allow_empty=True).strip()
        if not name:
            return JSONResponse(self.run.act(f"cluster {c} unnamed",
                                        lambda: set_names(self.run.run_dir, unname=[c])))
        labelling.check_name(name)
        return JSONResponse(self.run.act(f"cluster {c} named {name!r}",
                                    lambda: set_names(self.run.run_dir, [f"{c}={name}"])))

    async def corrections(self, request):
        doc = await _body(request)
        idx = doc.get("indices")
        if not isinstance(idx, list) or not idx or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise ApiError(400, "'indices' must be a non-empty list of image numbers")
        for i in idx:
            self.run.image_id(i)
        if doc.get("confirm") is True:  # a look that found the label right is a label too
            rows = [{"index": r["index"], "label": r["label"]} for r in self.run.image_rows(idx)
                    if r["label"] and r["how"] != "corrected"]
            if not rows:
                raise ApiError(409, "nothing to confirm: these images have no label yet, or "
                                    "were corrected already")
            return JSONResponse(self.run.act(f"{len(rows)} label(s) confirmed", lambda: add_corrections(
                self.run.run_dir, rows, "request")))
        label = EXCLUDED if doc.get("exclude") is True else _string(doc, "label", True).strip()
        if label:
            labelling.check_name(label)
        what = (f"{len(idx)} image(s) " + (f"moved to {label!r}" if label else "uncorrected"))
        return JSONResponse(self.run.act(what, lambda: add_corrections(
            self.run.run_dir, [{"index": i, "label": label} for i in idx], "request")))

    async def undo(self, request):
        return JSONResponse(self.run.undo_last())

    async def write_labels(self, request):
        doc = await _body(request)
        fmt = doc.get("export")
        if fmt not in (None, "csv", "labelstudio", "folders"):
            raise ApiError(400, f"export {fmt!r}: use csv, labelstudio or folders")
        with self.run.lock:
            path, counts = write_self_labels(self.run.run_dir)
            out = {"labels": str(path), "summary": {"n": self.run.n, **counts}}
            if fmt:
                out["export"] = str(export(self.run.run_dir, fmt))
        return JSONResponse(out)

    async def index(self, request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def api_error(self, request, exc: ApiError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def http_error(self, request, exc: HTTPException):  # no route, wrong method: JSON too
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def bad_input(self, request, exc: DVClustError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def internal(self, request, exc: Exception):  # a bug: say so, without a traceback
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def make_app(run_dir: Path, token: str | None = None) -> Starlette:
    """The app over one run folder; with `token`, every request must carry it (?token= once,
    then a cookie)."""
    h = Handlers(ReviewRun(run_dir))
    middleware = [Middleware(TokenCheck, token=token)] if token else []
    return Starlette(routes=[
        Route("/", h.index),
        Route("/api/clusters", h.clusters),
        Route("/api/clusters/{cid}/images", h.cluster_images),
        Route("/api/review", h.review),
        Route("/api/next", h.next_looks),
        Route("/api/summary", h.summary),
        Route("/api/images/{image}/thumb", h.thumb),
        Route("/api/images/{image}/full", h.full),
        Route("/api/names", h.names, methods=["POST"]),
        Route("/api/corrections", h.corrections, methods=["POST"]),
        Route("/api/undo", h.undo, methods=["POST"]),
        Route("/api/labels", h.write_labels, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], middleware=middleware, exception_handlers={
        ApiError: h.api_error, HTTPException: h.http_error, DVClustError: h.bad_input,
        Exception: h.internal})


class TokenCheck(BaseHTTPMiddleware):
    """A non-local server answers only requests that carry its token."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        given = request.query_params.get("token") or request.cookies.get("dvclust_token") \
            or request.headers.get("x-dvclust-token")
        if not given or not secrets.compare_digest(given, self.token):
            return JSONResponse({"error": "this server needs its token: open the URL printed "
                                 "where `dvclust serve` runs"}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie("dvclust_token", self.token, httponly=True, samesite="strict")
        return response


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Prepare the run, print its URL and serve until Ctrl-C."""
    import uvicorn

    from .. import log

    token = None if host in LOCAL_HOSTS else secrets.token_urlsafe(16)
    if token:
        log.info(f"warning: serving on {host}, reachable from other machines; every request "
                 "needs the token in the URL below")
    log.info(f"preparing the review app for {run_dir} ...")
    app = make_app(run_dir, token)
    shown = f"[{host}]" if ":" in host else host
    log.info(f"review app: http://{shown}:{port}/" + (f"?token={token}" if token else "")
             + "  (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")

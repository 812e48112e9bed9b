// The review app's page: three views over the /api of `dvclust serve` (no build step, no CDN).
// Every text from the run (names, file names) goes in through textContent, never as HTML.
"use strict";

const PAGE = 100;
const NEXT = 40;  // images per "Look next" batch: each confirmed batch moves the next one on
const view = document.getElementById("view");
let state = { clusters: null, sort: "size", selected: new Set() };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function status(msg, error = false) {
  const s = document.getElementById("status");
  s.textContent = msg;
  s.className = error ? "error" : "";
}

async function api(path, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch("/api/" + path, opts);
  const doc = await r.json();
  if (!r.ok) throw new Error(doc.error || r.statusText);
  return doc;
}

// One action: POST it, then (on success) `after` and a fresh view; the status line last, so that
// what it says is already on the page.
async function act(path, body, after) {
  try {
    const doc = await api(path, body);
    if (after) after();
    await refresh();
    status(doc.done ? "saved: " + doc.done : "undone: " + doc.undone);
    return doc;
  } catch (e) { status(e.message, true); }
}

function thumb(i, cls = "thumb") {
  return el("img", { class: cls, src: `/api/images/${i}/thumb`, alt: `image ${i}`, loading: "lazy" });
}

function clusterTitle(c) {
  return c.name ? c.name : `cluster ${c.id}`;
}

async function progress() {
  const s = await api("summary");
  const left = s.none ? `, ${s.none} without a label` : "";
  document.getElementById("progress").textContent =
    `${s.n} images: ${s.cluster} by a cluster name, ${s.corrected} corrected, ` +
    `${s.propagated} by propagation${left}`;
}

async function loadClusters() {
  state.clusters = await api("clusters");
  const dl = document.getElementById("names-in-use");
  dl.replaceChildren(...state.clusters.names_in_use.map(n => el("option", { value: n })));
}

// ---- the cluster grid ---------------------------------------------------------------------------
function sorted(clusters) {
  const by = {
    size: (a, b) => b.size - a.size,
    confidence: (a, b) => a.confidence - b.confidence,
    name: (a, b) => clusterTitle(a).localeCompare(clusterTitle(b)) || a.id - b.id,
  }[state.sort];
  return [...clusters].sort(by);
}

function card(c) {
  const input = el("input", { type: "text", list: "names-in-use", placeholder: "name",
                              "aria-label": `name of cluster ${c.id}`, value: c.name || "" });
  const save = () => act("names", { cluster: c.id, name: input.value });
  input.addEventListener("keydown", e => { if (e.key === "Enter") save(); });
  const mixed = el("input", { type: "checkbox", "aria-label": `cluster ${c.id} is mixed` });
  mixed.checked = c.mixed;
  mixed.addEventListener("change", () => act("names", { cluster: c.id, mixed: mixed.checked }));
  return el("div", { class: "card", "data-cluster": c.id },
    el("h3", {}, el("a", { href: `#/cluster/${c.id}`, text: clusterTitle(c) }),
       ...(c.mixed ? [" ", el("span", { class: "badge", text: "mixed" })] : [])),
    el("div", { class: "meta",
                text: `cluster ${c.id} · ${c.size} images · mean confidence ${c.confidence.toFixed(2)}` }),
    el("a", { href: `#/cluster/${c.id}`, class: "strip" }, ...c.typical.map(i => thumb(i))),
    el("div", { class: "toolbar" }, input, el("button", { text: "Save name", on: { click: save } }),
       el("label", {}, mixed, " mixed")));
}

function renderGrid() {
  const sel = el("select", { "aria-label": "sort clusters by",
                             on: { change: e => { state.sort = e.target.value; renderGrid(); } } },
    ...["size", "confidence", "name"].map(s => el("option", { value: s, text: "sort by " + s })));
  sel.value = state.sort;
  // names.json's labels_from: the README's "Beyond naming" says when each pays
  const from = el("select", { "aria-label": "a named cluster labels",
                              on: { change: e => act("names", { labels_from: e.target.value }) } },
    el("option", { value: "cluster", text: "a name labels its whole cluster" }),
    el("option", { value: "neighbours", text: "images take the vote of their nearest looked-at images" }));
  from.value = state.clusters.labels_from;
  view.replaceChildren(
    el("div", { class: "toolbar" }, el("h2", { text: `${state.clusters.k} clusters` }), sel, from),
    el("div", { class: "grid" }, ...sorted(state.clusters.clusters).map(card)));
}

// ---- galleries (a cluster's images, the review queue) -------------------------------------------
function tile(img) {
  const t = el("div", { class: "tile" + (state.selected.has(img.index) ? " selected" : ""),
                        "data-index": img.index, title: img.source },
    thumb(img.index),
    el("div", { class: "cap", text: img.label ? `${img.label} (${img.how})` : "no label" }),
    el("div", { class: "cap", text: `q ${img.confidence.toFixed(2)}` + (img.reason ? ` · ${img.reason}` : "") }),
    el("a", { class: "cap", href: `/api/images/${img.index}/full`, target: "_blank",
              text: img.source, on: { click: e => e.stopPropagation() } }));
  t.addEventListener("click", () => {
    if (state.selected.has(img.index)) state.selected.delete(img.index);
    else state.selected.add(img.index);
    t.classList.toggle("selected");
    document.getElementById("n-selected").textContent = `${state.selected.size} selected`;
  });
  return t;
}

function selectionTools() {
  const target = el("input", { type: "text", list: "names-in-use", placeholder: "name",
                               "aria-label": "move the selected images to" });
  const run = body => {
    if (!state.selected.size) return status("select images first (click them)", true);
    act("corrections", { indices: [...state.selected], ...body }, () => state.selected.clear());
  };
  return el("div", { class: "toolbar" },
    el("span", { id: "n-selected", text: `${state.selected.size} selected` }), target,
    el("button", { text: "Move selected", on: { click: () => run({ label: target.value }) } }),
    el("button", { text: "Exclude selected", on: { click: () => run({ exclude: true }) } }),
    el("button", { text: "Clear correction", on: { click: () => run({ label: "" }) } }));
}

// `confirm`: a button that keeps the labels of every image shown (a look that found them right)
async function renderGallery(title, path, offset, { confirm = false, limit = PAGE } = {}) {
  const doc = await api(`${path}?offset=${offset}&limit=${limit}`);
  const base = location.hash.split("?")[0];
  const pager = el("div", { class: "toolbar" },
    el("span", { text: `${doc.total ? offset + 1 : 0}-${offset + doc.images.length} of ${doc.total}` }),
    ...(offset > 0 ? [el("a", { href: `${base}?offset=${Math.max(0, offset - limit)}`, text: "previous" })] : []),
    ...(offset + limit < doc.total ? [el("a", { href: `${base}?offset=${offset + limit}`, text: "next" })] : []));
  const tools = selectionTools();
  if (confirm) tools.append(el("button", { text: "Confirm all shown", on: { click: () =>
    act("corrections", { indices: doc.images.map(i => i.index), confirm: true },
        () => state.selected.clear()) } }));
  view.replaceChildren(el("h2", { text: title }), tools, pager,
                       el("div", { class: "gallery" }, ...doc.images.map(tile)));
}

// ---- routing ------------------------------------------------------------------------------------
async function refresh() {
  try {
    await Promise.all([loadClusters(), progress()]);
    const [route, query] = location.hash.slice(1).split("?");
    const offset = parseInt(new URLSearchParams(query || "").get("offset") || "0", 10);
    const m = route.match(/^\/cluster\/(\d+)$/);
    if (m) {
      const c = state.clusters.clusters[+m[1]];
      if (!c) return status(`no cluster ${m[1]}`, true);
      await renderGallery(`${c.name ? `${c.name} (cluster ${c.id})` : clusterTitle(c)}: ` +
                          "most typical first, least certain last",
                          `clusters/${c.id}/images`, offset);
    } else if (route === "/next") {
      await renderGallery("Look next: the most typical image of each part of the data no one has " +
                          "looked at yet. Move the wrong ones, then confirm the rest",
                          "next", 0, { confirm: true, limit: NEXT });
    } else if (route === "/review") {
      await renderGallery("Worth a look: the least certain labels and the most outlying images",
                          "review", offset);
    } else renderGrid();
  } catch (e) { status(e.message, true); }
}

document.getElementById("undo").addEventListener("click", () => act("undo", {}));
document.getElementById("write-labels").addEventListener("click", async () => {
  status("writing labels ...");
  try {
    const d = await api("labels", { export: document.getElementById("export-format").value || null });
    status(`labels -> ${d.labels}` + (d.export ? `; export -> ${d.export}` : ""));
  } catch (e) { status(e.message, true); }
});
window.addEventListener("hashchange", () => { state.selected.clear(); status(""); refresh(); });
refresh();

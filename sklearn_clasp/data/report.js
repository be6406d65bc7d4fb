(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("clasp-data").textContent);
  var records = data.records, stages = data.stages, pageSize = __PAGE_SIZE__;
  var root = document.documentElement;
  var colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                 "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  var state = {page: 0, list: records};
  var pageImages = {expected: 0, loaded: 0, failed: 0, epoch: 0};

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var name in attrs) {
        if (attrs[name] !== null && attrs[name] !== undefined) node.setAttribute(name, attrs[name]);
      }
    }
    if (text !== null && text !== undefined) node.textContent = String(text);
    return node;
  }
  function has(x) { return x !== null && x !== undefined; }
  function num(x, digits) { return has(x) ? x.toFixed(digits) : "\u2013"; }
  function secs(x) { return !has(x) ? "\u2013" : x < 0.1 ? (1000 * x).toFixed(1) + " ms" :
                     x.toFixed(2) + " s"; }
  function total(r) {
    var t = 0, row = r.t || [];
    for (var i = 0; i < row.length; i++) { if (has(row[i])) t += row[i]; }
    return t;
  }
  function stem(r) { return has(r.u) ? r.u : r.n; }
  function outLink(r, suffix) { return data.out + stem(r) + suffix; }
  function mark() {
    root.setAttribute("data-images-expected", pageImages.expected);
    root.setAttribute("data-images-loaded", pageImages.loaded);
    root.setAttribute("data-images-failed", pageImages.failed);
  }

  function thumb(token, suffix, alt, href, missing) {
    var box = el("div", {"class": "thumb"});
    if (!token) { box.appendChild(el("span", {"class": "missing"}, missing)); return box; }
    var img = el("img", {src: data.thumbs + token + suffix, alt: alt, loading: "lazy",
                         decoding: "async"});
    var epoch = pageImages.epoch;
    pageImages.expected += 1;
    img.addEventListener("load", function () {
      if (epoch !== pageImages.epoch) return;
      if (img.naturalWidth > 0) pageImages.loaded += 1; else pageImages.failed += 1;
      mark();
    });
    img.addEventListener("error", function () {
      if (epoch !== pageImages.epoch) return;
      pageImages.failed += 1;
      mark();
    });
    if (href) { var a = el("a", {href: href}); a.appendChild(img); box.appendChild(a); }
    else box.appendChild(img);
    return box;
  }

  function card(r) {
    var c = el("article", {"class": "card", "data-name": r.n});
    var f = r.f || 0;
    var thumbs = el("div", {"class": "thumbs"});
    thumbs.appendChild(thumb(r.it, ".i.jpg", "image " + r.n, null, "no image thumbnail"));
    thumbs.appendChild(thumb(r.ot, ".o.jpg", "overlay " + r.n,
                             f & 2 ? outLink(r, "_overlay.png") : null, "no overlay"));
    c.appendChild(thumbs);
    var h = el("h3", {"class": "name"});
    h.appendChild(el("a", {href: outLink(r, ".json"), title: "the JSON record"}, r.n));
    c.appendChild(h);
    if (has(r.s)) c.appendChild(el("p", {"class": "source", title: r.s}, r.s));
    var dl = el("dl", {"class": "stats"});
    function stat(name, value, cls) {
      dl.appendChild(el("dt", null, name));
      dl.appendChild(el("dd", cls ? {"class": cls} : null, value));
    }
    stat("K", has(r.k) ? r.k : "\u2013", "k");
    stat("K0 (eigengap)", has(r.k0) ? r.k0 : "\u2013", "k0");
    stat("silhouette", num(r.sil, 3), "sil");
    if (r.bg) {
      stat("background", (has(r.bg[0]) ? "segment " + r.bg[0] : "none") +
           (has(r.bg[1]) ? " (score " + r.bg[1].toFixed(3) + ")" : ""), "bg");
    }
    if (r.sz) stat("size", r.sz[1] + " \u00d7 " + r.sz[0] + " px", "size");
    stat("time", secs(r.t ? total(r) : null), "time");
    c.appendChild(dl);
    if (r.t) {
      var sum = total(r), bar = el("div", {"class": "tbar"}), parts = [];
      for (var i = 0; i < r.t.length; i++) {
        if (!has(r.t[i])) continue;
        var seg = el("span", {title: stages[i] + ": " + secs(r.t[i])});
        seg.style.width = (sum > 0 ? 100 * r.t[i] / sum : 0) + "%";
        seg.style.background = colours[i % colours.length];
        bar.appendChild(seg);
        parts.push(stages[i] + " " + secs(r.t[i]));
      }
      c.appendChild(bar);
      c.appendChild(el("p", {"class": "tlist"}, parts.join(" \u00b7 ")));
    }
    var links = el("p", {"class": "links"});
    if (f & 2) links.appendChild(el("a", {href: outLink(r, "_overlay.png")}, "overlay"));
    if (f & 1) links.appendChild(el("a", {href: outLink(r, "_mask.png")}, "mask"));
    if (f & 4) links.appendChild(el("a", {href: outLink(r, "_explain.png"), "class": "explain"},
                                    "explain figure"));
    if (links.childNodes.length) c.appendChild(links);
    if (r.w) {
      var ul = el("ul", {"class": "warnings"});
      for (var j = 0; j < r.w.length; j++) ul.appendChild(el("li", null, r.w[j]));
      c.appendChild(ul);
    }
    return c;
  }

  function value(id) {
    var v = $(id).value.trim();
    if (v === "") return null;
    var x = Number(v);
    return isFinite(x) ? x : null;
  }
  function compare(key, dir) {
    return function (a, b) {
      var x = key(a), y = key(b);
      if (!has(x) && !has(y)) return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
      if (!has(x)) return 1;
      if (!has(y)) return -1;
      if (x !== y) return dir * (x < y ? -1 : 1);
      return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
    };
  }
  var sorts = {
    "name": compare(function (r) { return r.n; }, 1),
    "k-asc": compare(function (r) { return r.k; }, 1),
    "k-desc": compare(function (r) { return r.k; }, -1),
    "sil-desc": compare(function (r) { return r.sil; }, -1),
    "sil-asc": compare(function (r) { return r.sil; }, 1),
    "time-desc": compare(function (r) { return r.t ? total(r) : null; }, -1)
  };

  var fields = {kmin: "kmin", kmax: "kmax", smin: "smin", smax: "smax", q: "search",
                sort: "sort"};
  function readHash() {
    var pairs = location.hash.replace(/^#/, "").split("&"), page = 0;
    for (var i = 0; i < pairs.length; i++) {
      var kv = pairs[i].split("="), key = kv[0], v;
      try { v = decodeURIComponent(kv.slice(1).join("=")); } catch (e) { continue; }
      if (fields.hasOwnProperty(key)) $(fields[key]).value = v;
      else if (key === "warned") $("warned").checked = v === "1";
      else if (key === "page" && /^[0-9]+$/.test(v)) page = Math.max(0, Number(v) - 1);
    }
    if (!sorts[$("sort").value]) $("sort").value = "name";
    return page;
  }
  function writeHash() {
    var parts = [];
    for (var key in fields) {
      var v = $(fields[key]).value;
      if (v !== "" && !(key === "sort" && v === "name")) {
        parts.push(key + "=" + encodeURIComponent(v));
      }
    }
    if ($("warned").checked) parts.push("warned=1");
    if (state.page > 0) parts.push("page=" + (state.page + 1));
    var hash = parts.length ? "#" + parts.join("&") : "";
    if (hash !== location.hash && history.replaceState) {
      history.replaceState(null, "", hash || location.pathname + location.search);
    }
  }

  function apply(page) {
    var kmin = value("kmin"), kmax = value("kmax"), smin = value("smin"), smax = value("smax");
    var text = $("search").value.trim().toLowerCase(), warned = $("warned").checked;
    var list = records.filter(function (r) {
      if ((kmin !== null || kmax !== null) && !has(r.k)) return false;
      if (kmin !== null && r.k < kmin) return false;
      if (kmax !== null && r.k > kmax) return false;
      if ((smin !== null || smax !== null) && !has(r.sil)) return false;
      if (smin !== null && r.sil < smin) return false;
      if (smax !== null && r.sil > smax) return false;
      if (warned && !r.w) return false;
      if (text && r.n.toLowerCase().indexOf(text) < 0 &&
          (!has(r.s) || r.s.toLowerCase().indexOf(text) < 0)) return false;
      return true;
    });
    list.sort(sorts[$("sort").value] || sorts.name);
    state.list = list;
    state.page = typeof page === "number" ? page : 0;
    var bars = document.querySelectorAll(".hbar");
    for (var i = 0; i < bars.length; i++) {
      var k = Number(bars[i].getAttribute("data-k"));
      bars[i].classList.toggle("on", kmin === k && kmax === k);
    }
    render();
  }

  function pager(nav, pages) {
    while (nav.firstChild) nav.removeChild(nav.firstChild);
    if (pages <= 1) return;
    var prev = el("button", {type: "button", "class": "prev"}, "\u2190 previous");
    var next = el("button", {type: "button", "class": "next"}, "next \u2192");
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    prev.addEventListener("click", function () { go(state.page - 1); });
    next.addEventListener("click", function () { go(state.page + 1); });
    nav.appendChild(prev);
    nav.appendChild(el("span", null, "page " + (state.page + 1) + " of " + pages));
    nav.appendChild(next);
  }
  function go(page) { state.page = page; render(); $("images").scrollIntoView(); }

  function render() {
    var list = state.list, pages = Math.max(1, Math.ceil(list.length / pageSize));
    if (state.page >= pages) state.page = pages - 1;
    var start = state.page * pageSize, end = Math.min(list.length, start + pageSize);
    pageImages = {expected: 0, loaded: 0, failed: 0, epoch: pageImages.epoch + 1};
    var box = $("cards"), frag = document.createDocumentFragment();
    for (var i = start; i < end; i++) frag.appendChild(card(list[i]));
    while (box.firstChild) box.removeChild(box.firstChild);
    box.appendChild(frag);
    $("showing").textContent = list.length === 0 ? "No image matches." :
      "Showing " + (start + 1) + "\u2013" + end + " of " + list.length + " matching image(s) (" +
      records.length + " in all).";
    $("showing").setAttribute("data-matching", list.length);
    box.setAttribute("data-shown", end - start);
    pager($("pager-top"), pages);
    pager($("pager-bottom"), pages);
    writeHash();
    mark();
  }

  function table(holder, rows, columns, size, empty) {
    var page = 0;
    function draw() {
      while (holder.firstChild) holder.removeChild(holder.firstChild);
      holder.setAttribute("data-rows", rows.length);
      if (!rows.length) { holder.appendChild(el("p", {"class": "muted"}, empty)); return; }
      var t = el("table"), head = el("tr");
      for (var c = 0; c < columns.length; c++) head.appendChild(el("th", null, columns[c][0]));
      t.appendChild(el("thead")).appendChild(head);
      var body = el("tbody");
      var pages = Math.ceil(rows.length / size);
      for (var i = page * size; i < Math.min(rows.length, (page + 1) * size); i++) {
        var tr = el("tr");
        for (var j = 0; j < columns.length; j++) {
          var v = columns[j][1](rows[i]);
          tr.appendChild(el("td", {"class": columns[j][2]}, has(v) ? v : "\u2013"));
        }
        body.appendChild(tr);
      }
      t.appendChild(body);
      holder.appendChild(t);
      if (pages > 1) {
        var nav = el("nav", {"class": "pager"});
        var prev = el("button", {type: "button"}, "\u2190 previous");
        var next = el("button", {type: "button"}, "next \u2192");
        prev.disabled = page === 0;
        next.disabled = page >= pages - 1;
        prev.addEventListener("click", function () { page -= 1; draw(); });
        next.addEventListener("click", function () { page += 1; draw(); });
        nav.appendChild(prev);
        nav.appendChild(el("span", null, "page " + (page + 1) + " of " + pages +
                                         " (" + rows.length + " rows)"));
        nav.appendChild(next);
        holder.appendChild(nav);
      }
    }
    draw();
  }

  var ids = ["kmin", "kmax", "smin", "smax", "search", "sort", "warned"];
  for (var i = 0; i < ids.length; i++) {
    $(ids[i]).addEventListener("input", function () { apply(); });
  }
  $("controls").addEventListener("reset", function () { setTimeout(apply, 0); });
  $("controls").addEventListener("submit", function (e) { e.preventDefault(); });
  var bars = document.querySelectorAll(".hbar");
  for (var b = 0; b < bars.length; b++) {
    bars[b].addEventListener("click", function () {
      var k = this.getAttribute("data-k");
      var on = this.classList.contains("on");
      $("kmin").value = on ? "" : k;
      $("kmax").value = on ? "" : k;
      apply();
      $("images").scrollIntoView();
    });
  }
  table($("failure-table"), data.failures, [
    ["name", function (r) { return r.n; }, "name"],
    ["source", function (r) { return r.s; }, "source"],
    ["error", function (r) { return r.et; }, "error-type"],
    ["reason", function (r) { return r.e; }, "reason"],
    ["time", function (r) { return r.tm; }, "time"],
    ["times failed", function (r) { return r.c; }, "count"],
    ["has a record", function (r) { return r.r ? "yes" : "no"; }, "has-record"]
  ], 10, "No image failed.");
  table($("unreadable-table"), data.unreadable, [
    ["file", function (r) { return r.file; }, "file"],
    ["reason", function (r) { return r.reason; }, "reason"]
  ], 10, "Every entry could be read.");
  apply(readHash());
  root.setAttribute("data-rendered", "1");
})();

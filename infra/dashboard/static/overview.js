// boldcloud dashboard overview: polls /api/overview and repaints what changed (no reload).
(function () {
  "use strict";
  const root = document.getElementById("overview");
  const api = root.dataset.api;
  const base = root.dataset.base;
  const refreshMs = Math.max(250, parseFloat(root.dataset.refresh) * 1000);
  const STATE = { P: "pending", R: "running", D: "done", F: "failed", X: "excluded", "-": "na" };
  const STUDY_ROW = "(study)";
  let generation = null;
  let layoutKey = null;
  let cells = [];  // cells[row][stage] -> td
  root.dataset.polls = "0";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    const m = Math.floor(s / 60);
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function buildGrid(data) {
    const grid = document.getElementById("grid");
    const head = el("tr");
    head.appendChild(el("th", { class: "subject" }, "subject"));
    for (const stage of data.stages) head.appendChild(el("th", { class: "stage", title: stage }, stage));
    grid.tHead.replaceChildren(head);
    const body = document.createDocumentFragment();
    cells = [];
    for (const row of data.rows) {
      const tr = el("tr", { "data-subject": row.subject });
      const th = el("th", { class: "subject" });
      if (row.subject === STUDY_ROW) th.textContent = row.subject;
      else th.appendChild(el("a", { href: base + "/subject/" + encodeURIComponent(row.subject) }, "sub-" + row.subject));
      tr.appendChild(th);
      const tds = [];
      for (const stage of data.stages) {
        const td = el("td", { class: "cell", "data-subject": row.subject, "data-stage": stage });
        tr.appendChild(td);
        tds.push(td);
      }
      cells.push(tds);
      body.appendChild(tr);
    }
    grid.tBodies[0].replaceChildren(body);
  }

  function paintGrid(data) {
    const key = data.stages.join("|") + "#" + data.rows.map((r) => r.subject).join("|");
    if (key !== layoutKey) {
      buildGrid(data);
      layoutKey = key;
    }
    data.rows.forEach((row, i) => {
      for (let j = 0; j < data.stages.length; j++) {
        const td = cells[i][j];
        const state = STATE[row.cells[j]] || "pending";
        const [finished, total] = row.counts[j];
        const cls = "cell s-" + state;
        if (td.className !== cls) {
          td.className = cls;
          td.dataset.state = state;
        }
        const text = total ? finished + "/" + total : "";
        if (td.textContent !== text) td.textContent = text;
        td.title = (row.subject === STUDY_ROW ? row.subject : "sub-" + row.subject) + " · " +
          data.stages[j] + ": " + state + (total ? " (" + finished + " of " + total + " tasks finished)" : "");
      }
    });
  }

  function paintCounts(data) {
    const table = document.getElementById("counts");
    const head = el("tr");
    head.appendChild(el("th", {}, "stage"));
    for (const s of data.states) head.appendChild(el("th", {}, s));
    table.tHead.replaceChildren(head);
    const body = document.createDocumentFragment();
    for (const stage of data.stages) {
      const tr = el("tr", { "data-stage": stage });
      tr.appendChild(el("td", {}, stage));
      for (const s of data.states) {
        const n = data.counts[stage][s];
        tr.appendChild(el("td", n && s !== "done" && s !== "pending" ? { class: "s-" + s } : {}, String(n)));
      }
      body.appendChild(tr);
    }
    table.tBodies[0].replaceChildren(body);
  }

  function paintFailures(data) {
    const panel = document.getElementById("failures-panel");
    const list = document.getElementById("failures");
    panel.hidden = data.failures.length === 0;
    const frag = document.createDocumentFragment();
    for (const f of data.failures) {
      const box = el("div", { class: "failure", "data-task": f.task });
      box.appendChild(el("div", { class: "mono" }, f.task + " · " + f.attempts + " attempt(s)"));
      box.appendChild(el("div", { class: "error" }, f.error || "(no message)"));
      frag.appendChild(box);
    }
    if (data.failed_total > data.failures.length) {
      frag.appendChild(el("p", { class: "muted" }, "… and " + (data.failed_total - data.failures.length) + " more"));
    }
    list.replaceChildren(frag);
  }

  function paintProgress(p, data) {
    const pct = (100 * p.fraction).toFixed(1);
    const failedPct = p.cells ? (100 * p.failed_cells / p.cells).toFixed(1) : "0";
    document.getElementById("bar-done").style.width = pct + "%";
    document.getElementById("bar-failed").style.width = failedPct + "%";
    const bar = document.getElementById("progress-bar");
    bar.setAttribute("aria-valuenow", pct);
    document.getElementById("progress-text").textContent =
      p.complete + " of " + p.cells + " subject × stage cells finished (" + pct + " %)" +
      (p.failed_cells ? ", " + p.failed_cells + " with failures" : "");
    document.getElementById("eta").textContent = p.eta_s !== null ? duration(p.eta_s) : (p.active ? "…" : "idle");
    document.getElementById("throughput").textContent = p.throughput_per_min.toFixed(1);
    document.getElementById("n-running").textContent = p.running;
    if (data) {
      document.getElementById("n-subjects").textContent = data.subjects;
      document.getElementById("n-tasks").textContent = data.tasks;
      document.getElementById("n-failed").textContent = data.failed_total;
      document.getElementById("empty").hidden = data.tasks > 0;
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  }

  function render(data) {
    generation = data.generation;
    paintGrid(data);
    paintCounts(data);
    paintFailures(data);
    paintProgress(data.progress, data);
    root.dataset.generation = String(generation);
  }

  function setStatus(text, error) {
    const node = document.getElementById("live-status");
    node.textContent = text;
    node.classList.toggle("error", !!error);
  }

  async function poll() {
    try {
      const url = api + (generation === null ? "" : "?since=" + encodeURIComponent(generation));
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) {
        setStatus("update failed: HTTP " + response.status, true);
      } else {
        const data = await response.json();
        if (data.unchanged) paintProgress(data.progress, null);
        else render(data);
        setStatus("live", false);
        root.dataset.polls = String(parseInt(root.dataset.polls, 10) + 1);
      }
    } catch (err) {
      setStatus("cannot reach the dashboard server; retrying", true);
    } finally {
      // A hidden tab polls 5x less often: an open but unwatched dashboard costs little.
      setTimeout(poll, document.hidden ? 5 * refreshMs : refreshMs);
    }
  }

  render(JSON.parse(document.getElementById("initial").textContent));
  setStatus("live", false);
  setTimeout(poll, refreshMs);
})();

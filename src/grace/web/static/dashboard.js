// Grace's dashboard: fills /dashboard from the dashboard API (the caller's session cookie) and
// refreshes it every few seconds. Everything is drawn with textContent and uPlot's canvas: nothing
// the API returns is ever read as HTML.
(function () {
  "use strict";

  var API = "/api/htm/";
  var MAX_SAMPLES = 120; // queue depth samples kept for the live chart (10 minutes at 5 s)
  var charts = {};
  var queueSamples = { t: [], origins: {} };

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function get(path) {
    return fetch(API + path, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
      function (r) {
        if (r.status === 401) {
          window.location.href = "/signin?next=%2Fdashboard";
          throw new Error("signed out");
        }
        if (!r.ok) throw new Error(path.split("?")[0] + " answered " + r.status);
        return r.json();
      }
    );
  }

  function pct(rate) {
    return rate === null || rate === undefined ? "—" : (rate * 100).toFixed(1) + "%";
  }

  function ms(value) {
    if (value === null || value === undefined) return "—";
    if (value < 1000) return Math.round(value) + " ms";
    if (value < 120000) return (value / 1000).toFixed(1) + " s";
    return Math.round(value / 60000) + " min";
  }

  function shortId(id) {
    return id.length > 14 ? id.slice(0, 14) + "…" : id;
  }

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  function fillRows(table, rows, empty) {
    var body = table.querySelector("tbody");
    body.replaceChildren();
    if (!rows.length) {
      var tr = el("tr");
      var td = el("td", empty, "empty");
      td.colSpan = table.querySelectorAll("thead th").length;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    rows.forEach(function (cells) {
      var tr = el("tr");
      cells.forEach(function (c, i) {
        var td = el(i === 0 ? "th" : "td", c);
        if (i === 0) td.scope = "row";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  var TILES = [
    ["total_tasks", "Tasks", function (s) { return s.total_tasks; }],
    ["active_tasks", "Running", function (s) { return s.active_tasks; }],
    ["queued_tasks", "Queued", function (s) { return s.queued_tasks; }],
    ["completed_tasks", "Completed", function (s) { return s.completed_tasks; }],
    ["failed_tasks", "Failed", function (s) { return s.failed_tasks; }],
    ["sla_compliance_rate", "SLA compliance", function (s) { return pct(s.sla_compliance_rate); }],
    ["active_violations", "Active violations", function (s) { return s.active_violations; }],
    ["p50_execution_ms", "Execution p50", function (s) { return ms(s.p50_execution_ms); }],
    ["p95_execution_ms", "Execution p95", function (s) { return ms(s.p95_execution_ms); }],
    ["p99_execution_ms", "Execution p99", function (s) { return ms(s.p99_execution_ms); }],
    ["worker_utilization", "Workers busy", function (s) { return pct(s.worker_utilization); }],
    ["escalations_triggered", "Warnings · escalations · rescues", function (s) {
      return s.warnings_issued + " · " + s.escalations_triggered + " · " + s.sub_agents_spawned;
    }],
  ];

  function drawTiles(stats) {
    var tiles = document.getElementById("tiles");
    tiles.replaceChildren();
    TILES.forEach(function (t) {
      var box = el("div", null, "tile");
      box.setAttribute("data-figure", t[0]);
      box.appendChild(el("dt", t[1]));
      box.appendChild(el("dd", t[2](stats)));
      if (t[0] === "active_violations" && stats.active_violations > 0) box.classList.add("bad");
      if (t[0] === "failed_tasks" && stats.failed_tasks > 0) box.classList.add("warn");
      tiles.appendChild(box);
    });
    document.getElementById("window-hours").textContent = stats.window.hours;
    document.getElementById("scope").textContent = stats.scope === "everyone" ? "Everyone's tasks" : "Your tasks";
  }

  function drawHealth(health) {
    var box = document.getElementById("health");
    box.setAttribute("data-status", health.status);
    var words = { ok: "OK", degraded: "Degraded", failing: "Failing" };
    document.getElementById("health-status").textContent = words[health.status] || health.status;
    var list = document.getElementById("health-alerts");
    list.replaceChildren();
    if (!health.alerts.length) list.appendChild(el("li", "Every check is within its threshold."));
    health.alerts.forEach(function (a) {
      var li = el("li", null, "alert alert-" + a.level);
      li.appendChild(el("strong", a.level === "failing" ? "Failing: " : "Degraded: "));
      li.appendChild(document.createTextNode(a.message + " "));
      li.appendChild(el("span", "(" + a.check + ")", "check-name"));
      list.appendChild(li);
    });
  }

  function drawOrigins(stats, routing) {
    var names = Object.keys(routing.origins);
    Object.keys(stats.by_origin).forEach(function (n) { if (names.indexOf(n) < 0) names.push(n); });
    var total = stats.total_tasks || 0;
    var rows = names.map(function (n) {
      var mine = stats.by_origin[n] || { total_tasks: 0, active_tasks: 0, queued_tasks: 0, completed_tasks: 0, failed_tasks: 0 };
      var target = routing.origins[n] ? routing.origins[n].share : null;
      return [
        n,
        total ? pct(mine.total_tasks / total) + " (" + mine.total_tasks + ")" : "—",
        target === null ? "—" : pct(target),
        mine.active_tasks,
        mine.queued_tasks,
        mine.completed_tasks,
        mine.failed_tasks,
      ];
    });
    fillRows(document.getElementById("origins"), rows, "No origins configured.");
  }

  function drawTables(violations, slow, queued) {
    document.getElementById("violations-count").textContent = violations.total;
    fillRows(
      document.getElementById("violations"),
      violations.violations.map(function (v) {
        return [shortId(v.task_id), v.task_type, v.origin, v.priority, ms(v.overdue_ms), ms(v.sla_ms)];
      }),
      "None: every unfinished task is within its SLA."
    );
    fillRows(
      document.getElementById("slow"),
      slow.tasks.map(function (t) {
        return [shortId(t.task_id), t.task_type, t.origin, ms(t.elapsed_ms), ms(t.sla_ms), pct(t.elapsed_ratio)];
      }),
      "Nothing is running."
    );
    document.getElementById("queued-count").textContent = queued.total;
    document.getElementById("oldest-wait").textContent = ms(queued.oldest_wait_ms);
    fillRows(
      document.getElementById("queued"),
      queued.tasks.map(function (t) {
        return [shortId(t.task_id), t.task_type, t.origin, t.priority, ms(t.wait_ms), t.status];
      }),
      "The queue is empty."
    );
  }

  var PALETTE = ["--primary", "--approve", "--deny", "--medium", "--high", "--info-text", "--critical", "--muted"];

  function chart(id, series, data) {
    var box = document.getElementById(id);
    var width = Math.max(200, box.clientWidth);
    if (charts[id] && charts[id].series.length === series.length + 1) {
      charts[id].setData(data);
      if (Math.abs(charts[id].width - width) > 2) charts[id].setSize({ width: width, height: 180 });
      return;
    }
    if (charts[id]) charts[id].destroy();
    var axis = { stroke: css("--muted"), grid: { stroke: css("--border"), width: 1 }, ticks: { stroke: css("--border") } };
    charts[id] = new window.uPlot(
      {
        width: width,
        height: 180,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [axis, Object.assign({ size: 50 }, axis)],
        series: [{}].concat(
          series.map(function (name, i) {
            return { label: name, stroke: css(PALETTE[i % PALETTE.length]), width: 2, spanGaps: true, points: { show: true, size: 4 } };
          })
        ),
      },
      data,
      box
    );
  }

  function drawCharts(hourly, queued) {
    var b = hourly.buckets;
    var t = b.map(function (x) { return Date.parse(x.hour) / 1000; });
    chart("chart-tasks", ["created", "completed", "failed"], [
      t,
      b.map(function (x) { return x.created; }),
      b.map(function (x) { return x.completed; }),
      b.map(function (x) { return x.failed; }),
    ]);
    chart("chart-p95", ["p95 ms"], [t, b.map(function (x) { return x.p95_execution_ms; })]);
    chart("chart-sla", ["compliance %"], [
      t,
      b.map(function (x) { return x.sla_compliance_rate === null ? null : x.sla_compliance_rate * 100; }),
    ]);
    // Queue depth per origin: a sample at each refresh, kept while the page is open.
    var now = Date.parse(queued.at) / 1000;
    queueSamples.t.push(now);
    var names = Object.keys(queued.by_origin);
    names.forEach(function (n) {
      if (!queueSamples.origins[n]) queueSamples.origins[n] = queueSamples.t.slice(0, -1).map(function () { return null; });
    });
    Object.keys(queueSamples.origins).forEach(function (n) {
      var d = queued.by_origin[n];
      queueSamples.origins[n].push(d ? d.critical + d.high + d.normal + d.low : 0);
    });
    if (queueSamples.t.length > MAX_SAMPLES) {
      queueSamples.t.shift();
      Object.keys(queueSamples.origins).forEach(function (n) { queueSamples.origins[n].shift(); });
    }
    // All origins together, then each origin that has had anything queued since the page opened.
    var all = queueSamples.t.map(function (_, i) {
      return Object.keys(queueSamples.origins).reduce(function (sum, n) { return sum + (queueSamples.origins[n][i] || 0); }, 0);
    });
    var busy = Object.keys(queueSamples.origins).sort().filter(function (n) {
      return queueSamples.origins[n].some(function (v) { return v > 0; });
    });
    chart("chart-queue", ["all origins"].concat(busy), [queueSamples.t.slice(), all].concat(busy.map(function (n) { return queueSamples.origins[n].slice(); })));
  }

  function refresh(root) {
    var wanted = [
      get("dashboard/stats"),
      get("dashboard/health"),
      get("routing/stats"),
      get("dashboard/violations?limit=20"),
      get("dashboard/tasks/slow?limit=10"),
      get("dashboard/tasks/queued?limit=20"),
      get("dashboard/metrics/hourly?hours=24"),
    ];
    var error = document.getElementById("dash-error");
    return Promise.all(wanted)
      .then(function (r) {
        drawTiles(r[0]);
        drawHealth(r[1]);
        drawOrigins(r[0], r[2]);
        drawTables(r[3], r[4], r[5]);
        drawCharts(r[6], r[5]);
        error.hidden = true;
        document.getElementById("updated").textContent = "updated " + new Date(Date.parse(r[0].at)).toLocaleTimeString();
        root.setAttribute("data-loaded", String(Number(root.getAttribute("data-loaded") || "0") + 1));
      })
      .catch(function (e) {
        error.textContent = "Could not refresh the dashboard: " + e.message + ". Trying again shortly.";
        error.hidden = false;
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("dashboard");
    if (!root || !window.uPlot) return;
    var every = Number(root.getAttribute("data-refresh-ms")) || 5000;
    var loop = function () {
      refresh(root).then(function () {
        window.setTimeout(loop, document.hidden ? every * 4 : every);
      });
    };
    loop();
    // Colours come from the page's light or dark palette: a change of system setting redraws the charts.
    if (window.matchMedia) {
      window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", function () {
        Object.keys(charts).forEach(function (id) {
          charts[id].destroy();
          delete charts[id];
        });
        refresh(root);
      });
    }
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (id) {
        var box = document.getElementById(id);
        charts[id].setSize({ width: Math.max(200, box.clientWidth), height: 180 });
      });
    });
  });
})();

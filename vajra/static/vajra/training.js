// A training job's page, live over ws/v1/training/<job_id>/ (protocol in training/consumers.py): the progress
// bar, the loss chart (drawn by charts.js with uPlot; this file appends the steps as they arrive) with its figures
// table, and the events log follow the job; usage comes from GET /v1/training/jobs/<id>. Without this file the
// page shows the job as it was recorded when the page was rendered.
(function () {
  "use strict";

  var root = document.querySelector("[data-training-job]");
  if (!root) return;

  var POLL_MS = 5000;
  var TERMINAL = ["succeeded", "failed", "cancelled"];

  function byId(id) { return document.getElementById(id); }

  var live = byId("tj-live");
  var statusBadge = byId("tj-status");
  var result = byId("tj-result");
  var lossOut = byId("tj-loss");
  var bar = byId("tj-bar");
  var stepText = byId("tj-step-text");
  var etaText = byId("tj-eta");
  var errorBox = byId("tj-error");
  var cancelForm = byId("tj-cancel");
  var cancelRequested = byId("tj-cancel-requested");
  var chart = byId("tj-chart");
  var chartDesc = byId("tj-chart-desc");
  var figures = byId("tj-figures");
  var events = byId("tj-events");

  var state = {
    terminal: root.dataset.terminal === "true",
    total: Number(bar.max) || 0,
    trained: Number(bar.value) || 0,
    losses: {},        // step -> training loss
    evalLosses: {},    // step -> eval loss, for the steps that were evaluated
    loggedSteps: {},   // steps whose "Step n" event is in the log
    lastId: null,      // the last progress entry of the job's stream: where a reconnect resumes
    socket: null,
    retries: 0,
    pollTimer: null
  };

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function statusLabel(status) {
    var text = status.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function setLive(text, kind) {
    live.textContent = text;
    live.className = "badge" + (kind ? " badge--" + kind : "");
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function setStatus(status) {
    statusBadge.textContent = statusLabel(status);
    statusBadge.className = "badge badge--job-" + status;
  }

  function setProgress(trained, total, etaSeconds) {
    state.trained = Math.max(state.trained, trained);
    if (total) state.total = total;
    bar.max = state.total || 1;
    bar.value = Math.min(state.trained, bar.max);
    bar.textContent = Math.round(100 * bar.value / bar.max) + "%";
    stepText.textContent = state.trained + " / " + state.total;
    if (state.terminal) etaText.textContent = "done";
    else if (etaSeconds !== undefined && etaSeconds !== null) etaText.textContent = "about " + duration(etaSeconds) + " left";
  }

  function setLoss(loss) {
    if (loss !== null && loss !== undefined) lossOut.textContent = Number(loss).toFixed(4);
  }

  function present(value) {
    return value !== null && value !== undefined && !isNaN(value);
  }

  function figureRow(step) {
    var row = element("tr");
    row.appendChild(element("td", "num", String(step)));
    row.appendChild(element("td", "num", Number(state.losses[step]).toFixed(4)));
    if (figures.dataset.eval === "true") {
      row.appendChild(element("td", "num", present(state.evalLosses[step]) ? state.evalLosses[step].toFixed(4) : ""));
    }
    return row;
  }

  function drawChart() {
    var steps = Object.keys(state.losses).map(Number).sort(function (a, b) { return a - b; });
    var values = steps.map(function (s) { return state.losses[s]; });
    var series = [{label: "Training loss", values: values}];
    if (Object.keys(state.evalLosses).length) {
      series.push({label: "Eval loss", dash: true, values: steps.map(function (s) {
        return present(state.evalLosses[s]) ? state.evalLosses[s] : null;
      })});
    }
    if (window.vajraChart) window.vajraChart.update(chart, steps, series, Math.max(state.total, 1));
    chart.dataset.points = String(steps.length);
    chartDesc.textContent = values.length
      ? "Loss at " + steps.length + " step" + (steps.length === 1 ? "" : "s") + ", last " +
        values[values.length - 1].toFixed(4) + "."
      : "No steps yet.";
    if (series.length > 1 && figures.dataset.eval !== "true") {
      figures.dataset.eval = "true";
      figures.closest("table").querySelector("thead tr").appendChild(element("th", "num", "Eval loss"));
    }
    figures.replaceChildren.apply(figures, steps.map(figureRow));
  }

  function utc(iso) {
    return iso.slice(0, 16).replace("T", " ");
  }

  function eventRow(event) {
    var row = element("tr");
    var when = element("td");
    var time = element("time", null, utc(event.created_at));
    time.dateTime = event.created_at;
    when.appendChild(time);
    row.appendChild(when);
    var level = element("td");
    level.appendChild(element("span", "badge badge--level-" + event.level, event.level));
    row.appendChild(level);
    row.appendChild(element("td", null, event.message));
    row.appendChild(element("td", "num", event.step === null || event.step === undefined ? "" : String(event.step)));
    row.appendChild(element("td", "num", event.loss === null || event.loss === undefined ? ""
                                                                                         : Number(event.loss).toFixed(4)));
    return row;
  }

  function stepEvent(event) {
    return event.step !== null && event.step !== undefined && /^Step \d+/.test(event.message);
  }

  function renderEvents(list) {
    state.loggedSteps = {};
    events.replaceChildren.apply(events, list.map(function (event) {
      if (stepEvent(event)) state.loggedSteps[event.step] = true;
      return eventRow(event);
    }));
  }

  function appendEvent(event) {
    var box = events.closest(".tj-events");
    var stick = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
    if (stepEvent(event)) state.loggedSteps[event.step] = true;
    events.appendChild(eventRow(event));
    if (stick) box.scrollTop = box.scrollHeight;
  }

  function showResult(version) {
    if (!version) return;
    var link = element("a", null, root.dataset.adapter + " v" + version);
    link.href = root.dataset.adapterUrl;
    result.replaceChildren(link);
  }

  function showError(error) {
    errorBox.hidden = !error;
    errorBox.textContent = error ? error.message + " (" + error.code + ")" : "";
  }

  function finished() {
    state.terminal = true;
    if (cancelForm) cancelForm.hidden = true;
    if (cancelRequested) cancelRequested.hidden = true;
    etaText.textContent = "done";
    window.clearTimeout(state.pollTimer);
  }

  // The job as recorded: sent on connect (its history) and again when it ends.
  function renderJob(job) {
    var ending = job.terminal && !state.terminal;
    setStatus(job.status);
    state.losses = {};
    job.losses.forEach(function (point) { state.losses[point[0]] = point[1]; });
    state.evalLosses = {};
    (job.eval_losses || []).forEach(function (point) { state.evalLosses[point[0]] = point[1]; });
    if (job.terminal) finished();
    setProgress(job.trained_steps, job.total_steps, null);
    setLoss(job.last_loss);
    drawChart();
    renderEvents(job.events);
    showResult(job.result_version);
    showError(job.error);
    if (job.terminal) setLive("Finished", "active");
    if (ending) poll();  // the final usage
  }

  var handlers = {
    job: function (message) { renderJob(message.job); },

    progress: function (message) {
      if (message.id) state.lastId = message.id;
      if (state.terminal) return;
      setStatus("running");
      state.losses[message.step] = message.loss;
      if (present(message.eval_loss)) state.evalLosses[message.step] = Number(message.eval_loss);
      setProgress(message.step, message.total_steps, message.eta_s);
      setLoss(message.loss);
      drawChart();
      if (!state.loggedSteps[message.step]) {
        appendEvent({created_at: new Date().toISOString(), level: "info", step: message.step, loss: message.loss,
                     message: "Step " + message.step + "/" + message.total_steps + ": training loss " +
                              Number(message.loss).toFixed(4) + "."});
      }
    },

    final: function (message) {
      var outcome = message.result || {};
      setLive("Finishing…", "pending");
      if (outcome.error) showError(outcome.error);
    }
  };

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var query = state.lastId ? "?last_id=" + encodeURIComponent(state.lastId) : "";
    // The session cookie authenticates a same-origin socket; no key ever sits in the page.
    var socket = new WebSocket(scheme + window.location.host + root.dataset.wsPath + query, ["vajra.v1"]);
    state.socket = socket;
    setLive(state.retries ? "Reconnecting…" : "Connecting…", "pending");
    socket.addEventListener("open", function () {
      if (!state.terminal) setLive("Live", "active");
    });
    socket.addEventListener("message", function (event) {
      var message = JSON.parse(event.data);
      if (message.type === "error") {
        setLive("Not live", "revoked");
        showError(message.error);
        return;
      }
      var handler = handlers[message.type];
      if (handler) {
        state.retries = 0;
        handler(message);
      }
    });
    socket.addEventListener("close", function (event) {
      if (state.socket !== socket) return;
      state.socket = null;
      if (state.terminal) return;
      if (event.code >= 4400 && event.code < 4500 && event.code !== 4408) {
        setLive("Not live: reload for news", "revoked");
        return;  // a refusal (signed out, no rights) does not get better by retrying
      }
      // Dropped while the job runs: carry on after the last progress entry, so nothing is missed or repeated.
      setLive("Reconnecting…", "expired");
      state.retries += 1;
      window.setTimeout(connect, Math.min(10000, 500 * Math.pow(2, state.retries)));
    });
  }

  // Usage (gradients, cost) is not on the socket; the job's REST view has it. It also notices an end that the
  // socket has not brought yet (a job that failed before any node ran it writes nothing to its stream).
  function poll() {
    window.fetch(root.dataset.apiPath, {headers: {Accept: "application/json"}, credentials: "same-origin"})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (job) {
        if (!job) return;
        if (job.node) byId("tj-node").textContent = job.node;
        byId("tj-usage-steps").textContent = job.usage.steps;
        byId("tj-usage-gradients").textContent = job.usage.gradients;
        var cost = byId("tj-usage-cost");
        cost.replaceChildren("$" + job.usage.cost_usd + " ");
        cost.appendChild(element("span", "muted", "(" + job.usage.cost_micro_usd + " micro-$)"));
        if (!state.terminal && TERMINAL.indexOf(job.status) >= 0) {
          // Ask the socket for the recorded end: it sends the final job (events included) and closes.
          if (state.socket) state.socket.close();
          else connect();
        }
      })
      .catch(function () { /* the next poll tries again */ })
      .then(function () {
        if (!state.terminal) state.pollTimer = window.setTimeout(poll, POLL_MS);
      });
  }

  if (state.terminal) return;  // a finished job's page is already complete
  connect();
  state.pollTimer = window.setTimeout(poll, POLL_MS);
})();

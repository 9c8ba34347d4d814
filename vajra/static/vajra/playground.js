// The playground: chat over ws/v1/playground/ (protocol in serving/consumers.py). Hand-written, no library.
// The page keeps the conversation and sends all of it with every message; the server applies the chat template.
(function () {
  "use strict";

  var root = document.querySelector("[data-playground]");
  if (!root) return;

  function byId(id) { return document.getElementById(id); }

  var model = byId("pg-model");
  var versionField = byId("pg-version-field");
  var version = byId("pg-version");
  var tierBadge = byId("pg-tier");
  var unitsOut = byId("pg-units");
  var usdOut = byId("pg-usd");
  var systemPrompt = byId("pg-system");
  var temperature = byId("pg-temperature");
  var topP = byId("pg-top-p");
  var maxTokens = byId("pg-max-tokens");
  var seed = byId("pg-seed");
  var stops = byId("pg-stops");
  var busy = byId("pg-busy");
  var transcript = byId("pg-transcript");
  var empty = byId("pg-empty");
  var errorBox = byId("pg-error");
  var form = byId("pg-form");
  var input = byId("pg-input");
  var sendButton = byId("pg-send");
  var stopButton = byId("pg-stop");
  var clearButton = byId("pg-clear");
  var status = byId("pg-status");
  var enabled = root.dataset.enabled === "true";

  // Finished turns, [{role, content, keep}]: a stopped reply has ``keep``, its "Keep in context" checkbox, and goes
  // with the next message only while that is ticked.
  var history = [];
  var turn = null;     // the reply in flight: {user, requestId, lastId, text, sentAt, firstAt, node, textNode}
  var socket = null;
  var connected = false;
  var retries = 0;

  function dollars(value) {
    var text = Number(value).toFixed(6).replace(/0+$/, "");
    return "$" + (text.slice(-1) === "." ? text + "00" : text);
  }

  function microDollars(micro) { return dollars(micro / 1e6); }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // The model reference the server takes: a base model, an adapter (its current version) or adapter@vN.
  function modelRef() {
    var option = model.selectedOptions[0];
    return option.dataset.versions && version.value ? model.value + "@v" + version.value : model.value;
  }

  function modelLabel() {
    var option = model.selectedOptions[0];
    if (!option.dataset.versions) return model.value;
    return model.value + "@v" + (version.value || option.dataset.current);
  }

  function showVersions() {
    var option = model.selectedOptions[0];
    var versions = option && option.dataset.versions ? option.dataset.versions.split(" ") : [];
    versionField.hidden = versions.length === 0;
    version.replaceChildren();
    if (!versions.length) return;
    var current = option.dataset.current;
    version.appendChild(new Option("current (v" + current + ")", ""));
    versions.forEach(function (number) {
      version.appendChild(new Option("v" + number + (number === current ? " (current)" : ""), number));
    });
  }

  function showPrice() {
    var option = model.selectedOptions[0];
    if (!option) return;
    tierBadge.textContent = option.dataset.tier;
    tierBadge.className = "badge badge--tier-" + option.dataset.tier;
    unitsOut.textContent = option.dataset.units;
    usdOut.textContent = dollars(option.dataset.usd);
  }

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "badge badge--" + kind;
  }

  function refreshButtons() {
    var generating = turn !== null;
    sendButton.disabled = !enabled || !connected || generating;
    stopButton.disabled = !generating || !turn.requestId || turn.stopping;
    clearButton.disabled = generating;
    busy.hidden = !generating;
    busy.textContent = generating && turn.stopping ? "Stopping…" : "Generating…";
  }

  function showError(message) {
    errorBox.replaceChildren();
    if (message) errorBox.appendChild(element("p", null, message));
    errorBox.hidden = !message;
  }

  // Settings: every bad one is reported at once, beside its field and in the summary above the composer. The rules
  // are the server's (inference/parameters.py), which checks them again and answers the same way.
  var FIELDS = {temperature: temperature, top_p: topP, max_tokens: maxTokens, seed: seed, stop: stops,
                system: systemPrompt};
  var FIELD_NAMES = {temperature: "Temperature", top_p: "Top p", max_tokens: "Max tokens", seed: "Seed",
                     stop: "Stop sequences", system: "System prompt"};
  var MAX_SEED = BigInt("9223372036854775807");

  function fieldOf(param) {
    return FIELDS[String(param || "").split(".")[0]] || null;
  }

  function showProblems(problems) {
    Object.keys(FIELDS).forEach(function (name) {
      var input = FIELDS[name];
      var box = byId(input.id + "-error");
      input.removeAttribute("aria-invalid");
      if (box) { box.textContent = ""; box.hidden = true; }
    });
    errorBox.replaceChildren();
    errorBox.hidden = problems.length === 0;
    if (!problems.length) return;
    errorBox.appendChild(element("p", null, problems.length === 1 ? "Fix this setting:" :
                                 "Fix these " + problems.length + " settings:"));
    var list = element("ul", "pg-problems");
    problems.forEach(function (problem) {
      list.appendChild(element("li", null, problem.message));
      var input = fieldOf(problem.param);
      var box = input && byId(input.id + "-error");
      if (!input) return;
      input.setAttribute("aria-invalid", "true");
      if (box) {
        box.textContent = box.textContent ? box.textContent + " " + problem.message : problem.message;
        box.hidden = false;
      }
    });
    errorBox.appendChild(list);
  }

  function numberSetting(input, param, check, rule, optional) {
    var raw = input.value.trim();
    if (raw === "" && optional) return {value: null};
    var value = Number(raw);
    if (raw === "" || !isFinite(value) || !check(value, raw)) {
      return {problem: {param: param, message: FIELD_NAMES[param] + " must be " + rule + "; got " +
                        (raw === "" ? "nothing" : JSON.stringify(raw)) + "."}};
    }
    return {value: value};
  }

  function settings() {
    var cap = Number(maxTokens.max);
    var found = {
      temperature: numberSetting(temperature, "temperature", function (v) { return v >= 0 && v <= 2; },
                                 "a number in [0, 2]"),
      top_p: numberSetting(topP, "top_p", function (v) { return v > 0 && v <= 1; }, "a number in (0, 1]"),
      max_tokens: numberSetting(maxTokens, "max_tokens", function (v) {
        return Number.isInteger(v) && v >= 1 && v <= cap;
      }, "a whole number in [1, " + cap + "]"),
      seed: numberSetting(seed, "seed", function (v, raw) {
        return /^\d+$/.test(raw) && BigInt(raw) <= MAX_SEED;
      }, "a whole number in [0, 9223372036854775807], or empty for random", true)
    };
    var lines = stops.value.split("\n").filter(function (line) { return line !== ""; });
    if (lines.length > 4 || lines.some(function (line) { return line.length > 64; })) {
      found.stop = {problem: {param: "stop", message: "Stop sequences must be at most 4 lines of 1 to 64 " +
                              "characters; got " + lines.length + " line" + (lines.length === 1 ? "" : "s") +
                              (lines.some(function (line) { return line.length > 64; }) ? ", one too long" : "") +
                              "."}};
    } else {
      found.stop = {value: lines};
    }
    if (found.seed.value !== null && found.seed.value !== undefined) found.seed.value = seed.value.trim();
    var problems = [], values = {};
    Object.keys(found).forEach(function (name) {
      if (found[name].problem) problems.push(found[name].problem);
      else values[name] = found[name].value;
    });
    return {values: values, problems: problems};
  }

  function nearBottom() {
    return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function addMessage(role, label, text) {
    if (empty) empty.hidden = true;
    var stick = nearBottom();
    var item = element("li", "pg-msg pg-msg--" + role);
    var head = element("p", "pg-role", role === "user" ? "You" : "Assistant");
    if (label) head.appendChild(element("span", "pg-model", label));
    var body = element("div", "pg-text", text);
    item.appendChild(head);
    item.appendChild(body);
    transcript.appendChild(item);
    if (stick) transcript.scrollTop = transcript.scrollHeight;
    return item;
  }

  function sendRaw(text) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(text);
  }

  function send(message) { sendRaw(JSON.stringify(message)); }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    // The session cookie authenticates a same-origin socket; no key ever sits in the page.
    socket = new WebSocket(scheme + window.location.host + root.dataset.wsPath, ["vajra.v1"]);
    setStatus(retries ? "Reconnecting…" : "Connecting…", "pending");
    socket.addEventListener("message", function (event) { receive(JSON.parse(event.data)); });
    socket.addEventListener("close", function (event) {
      connected = false;
      refreshButtons();
      if (event.code >= 4400 && event.code < 4500 && event.code !== 4408) {
        setStatus("Not connected", "revoked");
        return;  // a refusal (signed out, no rights) does not get better by retrying
      }
      setStatus("Reconnecting…", "expired");
      retries += 1;
      window.setTimeout(connect, Math.min(10000, 500 * Math.pow(2, retries)));
    });
  }

  function receive(message) {
    var handler = handlers[message.type];
    if (handler) handler(message);
  }

  var handlers = {
    welcome: function () {
      connected = true;
      retries = 0;
      setStatus("Connected", "active");
      // The server cancelled the reply when the socket dropped; fetch the rest of it from where we were.
      if (turn && turn.requestId) {
        turn.resuming = true;
        send({type: "resume", request_id: turn.requestId, last_id: turn.lastId});
      } else if (turn) {
        failTurn("The connection dropped before the reply started; send it again.");
      }
      refreshButtons();
    },

    start: function (message) {
      if (!turn) return;
      showProblems([]);
      turn.requestId = message.request_id;
      turn.cost = message.cost;
      turn.resuming = false;
      refreshButtons();
    },

    delta: function (message) {
      if (!turn || message.request_id !== turn.requestId) return;
      if (turn.firstAt === null) {
        turn.firstAt = performance.now();
        turn.node.classList.remove("pg-msg--waiting");
      }
      var stick = nearBottom();
      turn.text += message.text;
      turn.lastId = message.id;
      turn.textNode.textContent = turn.text;
      if (stick) transcript.scrollTop = transcript.scrollHeight;
    },

    retry: function (message) {
      // The node answering was lost; another node starts the answer over.
      if (!turn || message.request_id !== turn.requestId) return;
      turn.text = "";
      turn.lastId = message.id;
      turn.textNode.textContent = "";
    },

    done: function (message) {
      if (!turn || message.request_id !== turn.requestId) return;
      settle(turn.node);
      if (message.finish_reason === "error") {
        var error = message.error || {};
        failTurn(error.message || "The runtime could not answer.", error.code);
        return;
      }
      turn.node.appendChild(element("p", "pg-stats", stats(message)));
      history.push(turn.user);
      if (message.finish_reason === "cancelled") {
        // A stopped reply is cut short: it stays on screen, marked, and out of the context unless kept.
        turn.node.classList.add("pg-msg--stopped");
        turn.node.querySelector(".pg-role").appendChild(element("span", "badge badge--revoked", "Stopped"));
        if (turn.text) {
          var keep = element("input");
          keep.type = "checkbox";
          keep.className = "pg-keep-box";
          var label = element("label", "pg-keep");
          label.appendChild(keep);
          label.appendChild(document.createTextNode(" Keep in context"));
          turn.node.appendChild(label);
          history.push({role: "assistant", content: turn.text, keep: keep});
        }
      } else if (turn.text) {
        history.push({role: "assistant", content: turn.text});
      }
      turn = null;
      refreshButtons();
      input.focus();
    },

    error: function (message) {
      var error = message.error || {};
      var problems = error.errors || (fieldOf(error.param) ? [{param: error.param, message: error.message}] : null);
      if (turn && !turn.requestId) {
        // Refused before it started (bad settings, an adapter that is gone, quota): nothing was run or billed.
        turn.node.remove();
        turn.userNode.remove();
        if (!input.value) input.value = turn.user.content;
        if (!transcript.querySelector(".pg-msg") && empty) empty.hidden = false;
        turn = null;
        refreshButtons();
      } else if (turn && (message.request_id === turn.requestId || turn.resuming)) {
        failTurn(error.message || "The stream failed.", error.code);
        return;
      }
      if (problems) showProblems(problems);
      else showError(error.message || "Something went wrong.");
    }
  };

  // A reply that is no longer being generated: no waiting marks left on it.
  function settle(node) {
    node.classList.remove("pg-msg--waiting");
    node.setAttribute("aria-busy", "false");
    var generating = node.querySelector(".pg-generating");
    if (generating) generating.remove();
  }

  function failTurn(text, code) {
    settle(turn.node);
    turn.node.classList.add("pg-msg--failed");
    turn.node.appendChild(element("p", "pg-stats pg-stats--error", text + (code ? " (" + code + ")" : "")));
    turn.userNode.classList.add("pg-msg--failed");
    turn = null;  // the failed turn stays on screen but out of the history sent next time
    refreshButtons();
  }

  function stats(message) {
    var usage = message.usage || {};
    var timings = message.timings || {};
    var tokens = usage.completion_tokens || 0;
    var parts = [];
    if (turn.firstAt !== null) {
      var first = "first token " + Math.round(turn.firstAt - turn.sentAt) + " ms";
      if (timings.first_token_ms != null) first += " (server " + Math.round(timings.first_token_ms) + " ms)";
      parts.push(first);
    }
    var rate = null;
    if (tokens > 1 && timings.total_ms > timings.first_token_ms && timings.first_token_ms != null) {
      rate = (tokens - 1) / ((timings.total_ms - timings.first_token_ms) / 1000);
    } else if (tokens > 0 && turn.firstAt !== null) {
      rate = tokens / ((performance.now() - turn.sentAt) / 1000);
    }
    if (rate !== null) parts.push(rate.toFixed(1) + " tokens/s");
    parts.push(plural(tokens, "token"));
    var cost = message.cost || turn.cost;
    if (cost) parts.push(plural(cost.units, "unit") + " · " + microDollars(cost.micro_usd));
    if (message.finish_reason === "length") parts.push("hit max tokens");
    if (message.finish_reason === "cancelled") parts.push("stopped");
    return parts.join(" · ");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim() || sendButton.disabled) return;
    var chosen = settings();
    showProblems(chosen.problems);
    if (chosen.problems.length) return;
    var user = {role: "user", content: text};
    var userNode = addMessage("user", null, text);
    var node = addMessage("assistant", modelLabel(), "");
    node.querySelector(".pg-role").appendChild(element("span", "pg-generating", "generating"));
    node.classList.add("pg-msg--waiting");
    node.setAttribute("aria-busy", "true");  // screen readers read the reply once, when it is finished
    turn = {user: user, userNode: userNode, node: node, textNode: node.querySelector(".pg-text"), requestId: null,
            lastId: "0", text: "", sentAt: performance.now(), firstAt: null, cost: null, stopping: false,
            resuming: false};
    input.value = "";
    refreshButtons();
    var context = history.filter(function (m) { return !m.keep || m.keep.checked; })
      .map(function (m) { return {role: m.role, content: m.content}; });
    if (systemPrompt.value.trim()) context.unshift({role: "system", content: systemPrompt.value});
    var message = {type: "chat", model: modelRef(), messages: context.concat([user])};
    Object.keys(chosen.values).forEach(function (name) { message[name] = chosen.values[name]; });
    // A seed is sent as a JSON number; past 2^53 JavaScript's numbers round, so it goes in the text as written.
    var body = JSON.stringify(message);
    if (chosen.values.seed !== null) body = body.replace(/"seed":"(\d+)"/, '"seed":$1');
    sendRaw(body);
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", function () {
    if (!turn || !turn.requestId) return;
    turn.stopping = true;
    send({type: "stop"});
    refreshButtons();
  });

  clearButton.addEventListener("click", function () {
    history = [];
    transcript.querySelectorAll(".pg-msg").forEach(function (node) { node.remove(); });
    if (empty) empty.hidden = false;
    showError("");
    input.focus();
  });

  model.addEventListener("change", function () { showVersions(); showPrice(); });
  showVersions();
  showPrice();
  refreshButtons();
  if (enabled) connect();
  else setStatus("Unavailable", "revoked");
})();

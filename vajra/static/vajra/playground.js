// The playground: chat over ws/v1/playground/ (protocol in serving/consumers.py). Hand-written, no library.
// The page keeps the conversation and sends all of it with every message; the server applies the chat template.
(function () {
  "use strict";

  var root = document.querySelector("[data-playground]");
  if (!root) return;

  function byId(id) { return document.getElementById(id); }

  var model = byId("pg-model");
  var tierBadge = byId("pg-tier");
  var unitsOut = byId("pg-units");
  var usdOut = byId("pg-usd");
  var temperature = byId("pg-temperature");
  var maxTokens = byId("pg-max-tokens");
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

  var history = [];    // finished turns, [{role, content}]
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
    var busy = turn !== null;
    sendButton.disabled = !enabled || !connected || busy;
    stopButton.disabled = !busy || !turn.requestId || turn.stopping;
    clearButton.disabled = busy;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
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

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

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
      turn.node.classList.remove("pg-msg--waiting");
      turn.node.setAttribute("aria-busy", "false");
      if (message.finish_reason === "error") {
        var error = message.error || {};
        failTurn(error.message || "The runtime could not answer.", error.code);
        return;
      }
      turn.node.appendChild(element("p", "pg-stats", stats(message)));
      history.push(turn.user);
      if (turn.text) history.push({role: "assistant", content: turn.text});
      turn = null;
      refreshButtons();
      input.focus();
    },

    error: function (message) {
      var error = message.error || {};
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
      showError(error.message || "Something went wrong.");
    }
  };

  function failTurn(text, code) {
    turn.node.classList.remove("pg-msg--waiting");
    turn.node.classList.add("pg-msg--failed");
    turn.node.setAttribute("aria-busy", "false");
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
    showError("");
    var option = model.selectedOptions[0];
    var user = {role: "user", content: text};
    var userNode = addMessage("user", null, text);
    var node = addMessage("assistant", option.dataset.label, "");
    node.classList.add("pg-msg--waiting");
    node.setAttribute("aria-busy", "true");  // screen readers read the reply once, when it is finished
    turn = {user: user, userNode: userNode, node: node, textNode: node.querySelector(".pg-text"), requestId: null,
            lastId: "0", text: "", sentAt: performance.now(), firstAt: null, cost: null, stopping: false,
            resuming: false};
    input.value = "";
    refreshButtons();
    send({type: "chat", model: model.value, messages: history.concat([user]),
          temperature: temperature.valueAsNumber, max_tokens: maxTokens.valueAsNumber});
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

  model.addEventListener("change", showPrice);
  showPrice();
  refreshButtons();
  if (enabled) connect();
  else setStatus("Unavailable", "revoked");
})();

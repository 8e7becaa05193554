/*
 * agentline web call widget, served by the daemon at /widget.js (no CDN,
 * no build step). Embed it with a publishable key and an agent id:
 *
 *   <div id="talk"></div>
 *   <script src="https://agentline.example/widget.js"
 *           data-key="al_pk_..." data-agent="agt_..."
 *           data-target="#talk" data-caller-name="Ada"></script>
 *
 * or mount it yourself: AgentlineWidget.mount(element, {key, agent, base}).
 *
 * It asks for the microphone, starts a web call (POST /v1/web-calls with
 * the publishable key), sends its SDP offer to the call's WHIP URL with the
 * call's single-use token (the ICE candidates gathered within a second;
 * later ones are trickled by PATCH to the session URL), plays the
 * agent, shows live captions from the data channel, and offers mute,
 * keypad and hang up. Every control is a real button with a label, usable
 * from the keyboard; captions are an aria-live region.
 */
(function () {
  "use strict";

  var STYLE =
    ".alw{font:16px/1.4 system-ui,sans-serif;color:#111;background:#fff;border:1px solid #ccd;" +
    "border-radius:12px;padding:12px;max-width:420px;box-sizing:border-box;width:100%}" +
    ".alw *{box-sizing:border-box}" +
    ".alw-row{display:flex;flex-wrap:wrap;gap:8px;align-items:center}" +
    ".alw button{font:inherit;min-height:44px;min-width:44px;padding:8px 14px;border-radius:22px;" +
    "border:1px solid #335;background:#f4f5fb;color:#111;cursor:pointer}" +
    ".alw button:focus-visible{outline:3px solid #1a5fd0;outline-offset:2px}" +
    ".alw button[disabled]{opacity:.5;cursor:default}" +
    ".alw .alw-call{background:#0b7a3e;border-color:#0b7a3e;color:#fff;flex:1 1 auto}" +
    ".alw .alw-hangup{background:#b3261e;border-color:#b3261e;color:#fff}" +
    ".alw button[aria-pressed=true]{background:#333;color:#fff}" +
    ".alw-status{margin:8px 0 0;font-size:14px;color:#333;min-height:1.4em}" +
    ".alw-captions{margin-top:8px;max-height:180px;overflow-y:auto;font-size:15px;border-top:1px solid #eee}" +
    ".alw-captions p{margin:6px 0;overflow-wrap:anywhere}" +
    ".alw-captions .alw-agent{color:#0b3d91}" +
    ".alw-keypad{display:grid;grid-template-columns:repeat(3,1fr);gap:6px;margin-top:8px}" +
    ".alw-keypad[hidden]{display:none}";

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    }
    if (text) e.textContent = text;
    return e;
  }

  function injectStyle() {
    if (document.getElementById("alw-style")) return;
    var s = el("style", { id: "alw-style" });
    s.textContent = STYLE;
    document.head.appendChild(s);
  }

  /* Waits for ICE gathering to finish, bounded: the offer carries the
   * candidates gathered by then, later ones are trickled by PATCH. */
  function gathered(pc, ms) {
    return new Promise(function (resolve) {
      if (pc.iceGatheringState === "complete") return resolve();
      var done = function () {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ms);
    });
  }

  function Widget(root, opts) {
    this.opts = opts;
    this.base = (opts.base || "").replace(/\/$/, "");
    this.state = "idle";
    this.pc = null;
    this.channel = null;
    this.stream = null;
    this.call = null;
    this.session = null;
    injectStyle();
    var box = el("section", { class: "alw", "aria-label": opts.label || "Talk to our agent" });
    var row = el("div", { class: "alw-row" });
    this.callBtn = el("button", { type: "button", class: "alw-call" }, "Call");
    this.muteBtn = el("button", { type: "button", "aria-pressed": "false", disabled: "" }, "Mute");
    this.keysBtn = el("button", { type: "button", "aria-expanded": "false", disabled: "" }, "Keypad");
    this.hangBtn = el("button", { type: "button", class: "alw-hangup", disabled: "" }, "Hang up");
    row.appendChild(this.callBtn);
    row.appendChild(this.muteBtn);
    row.appendChild(this.keysBtn);
    row.appendChild(this.hangBtn);
    this.keypad = el("div", { class: "alw-keypad", role: "group", "aria-label": "Keypad", hidden: "" });
    var self = this;
    "123456789*0#".split("").forEach(function (k) {
      var b = el("button", { type: "button", "aria-label": "Key " + k }, k);
      b.addEventListener("click", function () { self.press(k); });
      self.keypad.appendChild(b);
    });
    this.status = el("p", { class: "alw-status", role: "status" }, "Ready");
    this.captions = el("div", {
      class: "alw-captions", role: "log", "aria-live": "polite", "aria-label": "Live captions",
    });
    this.audio = el("audio", { autoplay: "" });
    box.appendChild(row);
    box.appendChild(this.keypad);
    box.appendChild(this.status);
    box.appendChild(this.captions);
    box.appendChild(this.audio);
    root.appendChild(box);
    this.box = box;
    this.callBtn.addEventListener("click", function () { self.start(); });
    this.hangBtn.addEventListener("click", function () { self.hangup(); });
    this.muteBtn.addEventListener("click", function () { self.toggleMute(); });
    this.keysBtn.addEventListener("click", function () {
      var open = self.keypad.hasAttribute("hidden");
      if (open) self.keypad.removeAttribute("hidden"); else self.keypad.setAttribute("hidden", "");
      self.keysBtn.setAttribute("aria-expanded", String(open));
    });
  }

  Widget.prototype.setState = function (state, text) {
    this.state = state;
    this.box.setAttribute("data-state", state);
    this.status.textContent = text;
    var live = state === "live";
    this.callBtn.disabled = state !== "idle" && state !== "ended";
    this.callBtn.textContent = state === "connecting" ? "Connecting…" : "Call";
    this.hangBtn.disabled = !(live || state === "connecting");
    this.muteBtn.disabled = !live;
    this.keysBtn.disabled = !live;
  };

  Widget.prototype.caption = function (speaker, text) {
    var p = el("p", { class: speaker === "agent" ? "alw-agent" : "alw-caller" });
    var who = el("strong", {}, speaker === "agent" ? (this.agentName || "Agent") + ": " : "You: ");
    p.appendChild(who);
    p.appendChild(document.createTextNode(text));
    this.captions.appendChild(p);
    this.captions.scrollTop = this.captions.scrollHeight;
  };

  Widget.prototype.start = async function () {
    var o = this.opts;
    this.setState("connecting", "Asking for the microphone…");
    this.captions.textContent = "";
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      this.setState("connecting", "Connecting…");
      var r = await fetch(this.base + "/v1/web-calls", {
        method: "POST",
        headers: { Authorization: "Bearer " + o.key, "Content-Type": "application/json" },
        body: JSON.stringify({ agent_id: o.agent, caller_name: o.callerName || undefined }),
      });
      var call = await r.json();
      if (!r.ok) throw new Error((call.error && call.error.message) || "HTTP " + r.status);
      this.call = call;
      this.agentName = call.agent && call.agent.name;
      var pc = new RTCPeerConnection({ iceServers: call.ice_servers || [] });
      this.pc = pc;
      var self = this;
      this.stream.getAudioTracks().forEach(function (t) { pc.addTrack(t, self.stream); });
      pc.ontrack = function (e) { self.audio.srcObject = e.streams[0] || new MediaStream([e.track]); };
      pc.onconnectionstatechange = function () {
        if (pc.connectionState === "connected") {
          self.setState("live", "Live with " + (self.agentName || "the agent"));
        } else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          self.finish("Call ended");
        }
      };
      var ch = pc.createDataChannel("agentline");
      this.channel = ch;
      ch.onmessage = function (e) {
        try {
          var m = JSON.parse(e.data);
          if (m.type === "transcript" && typeof m.text === "string") self.caption(m.speaker, m.text);
        } catch (err) { /* not ours */ }
      };
      // Candidates found after the offer was read go by PATCH (trickle
      // ICE, RFC 9725 section 4.3.1) once the session URL is known.
      var offered = false;
      this.late = [];
      pc.onicecandidate = function (e) {
        if (offered && e.candidate && e.candidate.candidate) {
          self.late.push(e.candidate);
          self.trickle();
        }
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 1000);
      var offer = pc.localDescription.sdp;
      offered = true;
      this.iceCreds = (offer.match(/^a=ice-(ufrag|pwd):.*$/gm) || []).slice(0, 2);
      var w = await fetch(this.base + call.whip_url, {
        method: "POST",
        headers: { Authorization: "Bearer " + call.token, "Content-Type": "application/sdp" },
        body: offer,
      });
      if (w.status !== 201) throw new Error("media refused (HTTP " + w.status + ")");
      this.session = w.headers.get("Location");
      await pc.setRemoteDescription({ type: "answer", sdp: await w.text() });
      this.trickle();
    } catch (err) {
      this.finish("Could not connect: " + err.message);
    }
  };

  /* Sends the candidates gathered late, as an SDP fragment (RFC 8840
   * section 9) for the first m-line, the one every other is bundled on. */
  Widget.prototype.trickle = function () {
    if (!this.session || !this.call || !this.late.length) return;
    var c = this.late.splice(0, this.late.length);
    var lines = this.iceCreds.slice();
    lines.push("m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:" + (c[0].sdpMid || "0"));
    c.forEach(function (x) { lines.push("a=" + x.candidate); });
    fetch(this.base + this.session, {
      method: "PATCH",
      headers: {
        Authorization: "Bearer " + this.call.token,
        "Content-Type": "application/trickle-ice-sdpfrag",
      },
      body: lines.join("\r\n") + "\r\n",
    }).catch(function () {});
  };

  Widget.prototype.press = function (key) {
    if (this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify({ type: "dtmf", digit: key }));
    }
  };

  Widget.prototype.toggleMute = function () {
    if (!this.stream) return;
    var track = this.stream.getAudioTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    this.muteBtn.setAttribute("aria-pressed", String(!track.enabled));
    this.muteBtn.textContent = track.enabled ? "Mute" : "Unmute";
  };

  Widget.prototype.hangup = function () {
    if (this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify({ type: "hangup" }));
    }
    if (this.session && this.call) {
      fetch(this.base + this.session, {
        method: "DELETE",
        headers: { Authorization: "Bearer " + this.call.token },
      }).catch(function () {});
    }
    this.finish("Call ended");
  };

  Widget.prototype.finish = function (text) {
    if (this.state === "ended" || this.state === "idle" && !this.pc) {
      this.setState("ended", text);
      return;
    }
    var pc = this.pc;
    this.pc = null;
    if (this.stream) this.stream.getTracks().forEach(function (t) { t.stop(); });
    this.stream = null;
    this.muteBtn.setAttribute("aria-pressed", "false");
    this.muteBtn.textContent = "Mute";
    // Closed a moment later, so a hangup on the data channel leaves first.
    if (pc) setTimeout(function () { pc.close(); }, 300);
    this.lastPc = pc;
    this.setState("ended", text);
  };

  var widgets = [];
  var api = {
    mount: function (root, opts) {
      var w = new Widget(root, opts);
      widgets.push(w);
      return w;
    },
    widgets: widgets,
  };
  window.AgentlineWidget = api;

  var script = document.currentScript;
  if (script && script.getAttribute("data-key")) {
    var base = script.getAttribute("data-base") || new URL(script.src, location.href).origin;
    var opts = {
      key: script.getAttribute("data-key"),
      agent: script.getAttribute("data-agent"),
      callerName: script.getAttribute("data-caller-name"),
      label: script.getAttribute("data-label"),
      base: base,
    };
    var mount = function () {
      var sel = script.getAttribute("data-target");
      var root = sel && document.querySelector(sel);
      if (!root) {
        root = document.createElement("div");
        script.parentNode.insertBefore(root, script.nextSibling);
      }
      api.mount(root, opts);
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
    else mount();
  }
})();

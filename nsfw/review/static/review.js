// The queue page: one item at a time, rendered from the review API's JSON, decided by button or key.
// Looking claims nothing: a claim starts when the moderator acts on the item (reveal, full size, a
// note, a decision), is renewed while the item stays open, and ends on skip, on moving on, on
// sign-out (the server's) and when the tab closes (a beacon). The list follows the server every few
// seconds: items decided elsewhere leave it, items claimed elsewhere are marked, new items arrive,
// and the count is the server's. Everything goes through the review API with the session and its
// CSRF token.
"use strict";

// A moderator revealed an item, on any of the pages: the server records it (once per moderator and
// item) against their exposure limits, and answers whether a break is due.
function countReveal(id) {
  return fetch("/review/items/" + encodeURIComponent(id) + "/reveal", {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRFToken": document.querySelector('meta[name="csrf-token"]').content },
  });
}

(function () {
  const list = document.querySelector("[data-queue]");
  if (!list) return;
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const status = document.getElementById("status");
  const empty = document.getElementById("empty");
  const total = document.querySelector('[data-field="total"]');
  const template = document.getElementById("item-template");
  const me = list.dataset.moderator;
  const lease = Number(list.dataset.lease) || 120;
  const adultClasses = JSON.parse(list.dataset.adultClasses || "{}");
  const blurOn = !document.body.classList.contains("no-blur");
  const view = list.dataset.view || "queue"; // queue: the moderators' (no escalated items); leads: the escalated
  const peek = list.dataset.holdToPeek === "true";
  const PAGE = 50;
  const POLL_MS = 4000;
  const MIN_SIDE = 64; // a picture's shortest side is shown at least this large, its pixels crisp
  let items = []; // the items' elements, the server's order (skipped ones last)
  let index = -1;
  let held = null; // the id of the item this page holds a claim on
  let renewing = null;
  let busy = false;

  function call(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  // What a refusal means to the moderator, by its error code.
  const refusals = {
    same_moderator: "This appeal contests your own decision: another moderator decides it. Press J for the next item.",
    lead_only: "Only a lead may decide an escalated item.",
    claimed: "Another moderator holds it now: press J for the next item.",
  };

  async function errorCode(answer) {
    try { return (await answer.clone().json()).error.code; } catch (error) { return ""; }
  }

  function path(id, rest) { return "/reviews/" + encodeURIComponent(id) + (rest || ""); }
  function field(element, name) { return element.querySelector('[data-field="' + name + '"]'); }
  function current() { return index >= 0 ? items[index] : undefined; }

  function ago(stamp) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(stamp)) / 1000));
    if (seconds >= 86400) return Math.floor(seconds / 86400) + " d";
    if (seconds >= 3600) return Math.floor(seconds / 3600) + " h";
    if (seconds >= 60) return Math.floor(seconds / 60) + " min";
    return seconds + " s";
  }

  function host(url) {
    try { return new URL(url).host; } catch (error) { return url; }
  }

  function kindWord(item) {
    if (item.frames.video) return "Video";
    return item.frames.count > 1 ? "Animation" : "Image";
  }

  // What the item is, for a screen reader and for the eye: its content, not its id.
  function describe(item) {
    const size = item.width ? ", " + item.width + " × " + item.height : "";
    const from = item.source_url ? " from " + host(item.source_url) : " uploaded by " + item.key;
    const why = { audit: "audit sample", appeal: "appeal of a decision" }[item.kind] || "model not sure";
    return kindWord(item) + size + from + ", " + why +
      ", waiting " + ago(item.created);
  }

  function when(frame) {
    return frame.time_s === null || frame.time_s === undefined ? "?" : frame.time_s.toFixed(1) + " s";
  }

  function frameName(frames, frame) {
    return frames.video ? "frame at " + when(frame) : "frame " + frame.index;
  }

  function render(item) {
    const element = template.content.firstElementChild.cloneNode(true);
    element.dataset.reviewId = item.id;
    element.item = item;
    const picture = field(element, "thumbnail");
    picture.addEventListener("load", function () { fit(picture); });
    picture.src = path(item.id, "/thumbnail");
    field(element, "reason").textContent = item.summary;
    field(element, "model-reason").textContent = item.reason;
    field(element, "model").textContent = "Model: " + item.model + " (" + item.model_version + ")";
    renderSource(field(element, "source"), item);
    field(element, "refs").textContent = "key " + item.key + (item.refs.length
      ? " · refs " + item.refs.map(function (ref) { return ref.ref + " (" + ref.key + ")"; }).join(", ") : "");
    field(element, "kind").textContent = {
      audit: "audit: a sample of the model's automatic verdicts",
      appeal: "appeal: the user contests a decision",
      unknown: "unknown: the model could not decide",
    }[item.kind] || item.kind;
    const appeal = field(element, "appeal");
    if (item.appeal) {
      appeal.hidden = false;
      appeal.textContent = "The user's statement: “" + item.appeal.statement + "” (the decision was " + item.appeal.label +
        ", by " + item.appeal.decided_by + "; another moderator decides the appeal).";
    }
    if (item.escalated) {
      const escalated = field(element, "escalated");
      escalated.hidden = false;
      escalated.textContent = "Escalated by " + item.escalated_by + " " + ago(item.escalated) + " ago.";
    }
    field(element, "page").href = "/review/items/" + encodeURIComponent(item.id);
    field(element, "size").textContent = (item.width ? item.width + " × " + item.height + " px" : "size not recorded") +
      ", " + item.frames.count + (item.frames.count === 1 ? " frame" : " frames") + (item.frames.video ? " (video)" : "");
    renderScores(element, item);
    renderFrames(element, item);
    update(element, item);
    return element;
  }

  // The source: its host, the full address behind a click (as text, never a link to follow).
  function renderSource(place, item) {
    if (!item.source_url) { place.textContent = "an upload (no address)"; return; }
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = host(item.source_url);
    const full = document.createElement("code");
    full.className = "url";
    full.textContent = item.source_url;
    details.append(summary, full);
    place.replaceChildren(details);
  }

  function renderScores(element, item) {
    const unsafe = adultClasses[item.model] || [];
    const scores = document.createElement("ul");
    scores.className = "scores";
    scores.setAttribute("aria-label", "Scores");
    Object.entries(item.scores).forEach(function ([name, value]) {
      const row = document.createElement("li");
      row.className = "score" + (unsafe.indexOf(name) >= 0 ? " adult-class" : "");
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = value;
      bar.setAttribute("aria-label", name);
      const number = document.createElement("span");
      number.textContent = value.toFixed(3);
      row.append(label, " ", bar, " ", number);
      scores.append(row);
    });
    field(element, "scores").replaceChildren(scores);
  }

  // An animation or a video: said before anything else; every classified frame in a strip, the one
  // that decided the verdict first, each with its time and scores; ← and → step through them.
  function renderFrames(element, item) {
    const frames = item.frames;
    const note = field(element, "animation");
    const strip = field(element, "strip");
    if (frames.count <= 1 && !frames.video) return;
    const decided = frames.classified.find(function (frame) { return frame.index === frames.chosen; });
    note.hidden = false;
    note.textContent = frames.video
      ? "Video: " + frames.classified.length + " sampled frames judged. The picture is the frame at " +
        (decided ? when(decided) : "?") + ", the one that decided the verdict; check every frame below before deciding."
      : "Animation: " + frames.count + " frames, " + frames.classified.length +
        " classified. The picture is frame " + frames.chosen +
        ", the one that decided the verdict; check every frame below before deciding.";
    field(element, "thumbnail").alt = "Image under review: the frame that decided the verdict";
    strip.hidden = false;
    const ordered = frames.classified.slice().sort(function (a, b) {
      return (b.index === frames.chosen) - (a.index === frames.chosen) || a.position - b.position;
    });
    ordered.forEach(function (frame) {
      const entry = document.createElement("li");
      entry.dataset.frame = String(frame.position);
      const chosen = frame.index === frames.chosen;
      if (chosen) entry.className = "chosen";
      const picture = document.createElement("img");
      picture.alt = frames.video ? "Frame at " + when(frame) : "Frame " + frame.index;
      picture.src = path(item.id, "/frames/" + frame.position);
      const caption = document.createElement("span");
      const top = Object.entries(frame.scores).sort(function (a, b) { return b[1] - a[1]; })[0];
      caption.textContent = frameName(frames, frame) + " · adult " + frame.adult.toFixed(3) +
        (top ? " · " + top[0] + " " + top[1].toFixed(2) : "") + (chosen ? " · decided the verdict" : "");
      entry.append(picture, caption);
      strip.append(entry);
    });
  }

  // Tiny and extreme shapes (a 1×1, a 2000×16 strip) scaled up by a whole factor, pixels crisp.
  function fit(picture) {
    const width = picture.naturalWidth, height = picture.naturalHeight;
    if (!width || !height) return;
    const shortest = Math.min(width, height);
    const scale = shortest < MIN_SIDE ? Math.ceil(MIN_SIDE / shortest) : 1;
    picture.classList.toggle("pixelated", scale > 1);
    if (scale > 1) {
      picture.width = width * scale;
      picture.height = height * scale;
    } else {
      picture.removeAttribute("width");
      picture.removeAttribute("height");
    }
  }

  // What changes while the item waits: its age, and who holds it.
  function update(element, item) {
    element.item = item;
    element.setAttribute("aria-label", describe(item));
    field(element, "age").textContent = ago(item.created) + " ago";
    const claim = field(element, "claim");
    if (held === item.id) {
      element.dataset.claimed = "mine";
      claim.textContent = "Claimed by you while it is open.";
    } else if (item.claimed_by && item.claimed_by !== me) {
      element.dataset.claimed = "other";
      claim.textContent = "Claimed by " + item.claimed_by + ".";
    } else {
      delete element.dataset.claimed;
      claim.textContent = "";
    }
  }

  function showing(element) {
    items.forEach(function (e) { e.classList.toggle("current", e === element); });
    empty.hidden = items.length > 0;
  }

  function pressed(element, action, on) {
    const button = element.querySelector('[data-action="' + action + '"]');
    button.setAttribute("aria-pressed", on ? "true" : "false");
    if (action === "reveal") button.firstChild.textContent = on ? "Blur again " : "Reveal ";
    if (action === "zoom") button.firstChild.textContent = on ? "Fit " : "Full size ";
  }

  // Back to how an item looks before anyone acts on it: blurred, fitted, its deciding frame.
  function reset(element) {
    element.classList.remove("revealed", "zoomed");
    pressed(element, "reveal", false);
    pressed(element, "zoom", false);
    const picture = field(element, "thumbnail");
    const source = path(element.dataset.reviewId, "/thumbnail");
    if (!picture.src.endsWith(source)) picture.src = source;
    element.querySelectorAll("[data-frame]").forEach(function (e) { e.classList.remove("selected"); });
  }

  async function open(next, quiet) {
    const previous = current();
    if (items.length === 0) {
      index = -1;
      showing(null);
      if (previous) await release(previous);
      if (!quiet) status.textContent = "Nothing to review.";
      return;
    }
    index = Math.max(0, Math.min(next, items.length - 1));
    const element = items[index];
    if (previous && previous !== element) {
      reset(previous);
      await release(previous);
    }
    showing(element);
    element.focus();
    if (!blurOn) seen(element); // nothing hides it: opening it is looking at it
    if (!quiet) status.textContent = "Item " + (index + 1) + " of " + items.length + " here: " + describe(element.item) + ".";
  }

  // A claim for the item the moderator acts on; false (and said why) when another holds it or it
  // was decided meanwhile. Acts in quick succession (Space, then A) share one claim request.
  let claiming = null;
  function act(element) {
    const id = element.dataset.reviewId;
    if (held === id) return Promise.resolve(true);
    if (claiming && claiming.id === id) return claiming.promise;
    const promise = claim(element, id).finally(function () { if (claiming && claiming.promise === promise) claiming = null; });
    claiming = { id: id, promise: promise };
    return promise;
  }

  async function claim(element, id) {
    if (held) await release(items.find(function (e) { return e.dataset.reviewId === held; }) || null);
    const answer = await call("POST", path(id, "/claim"));
    if (answer.ok) {
      if (current() !== element) { // moved on while the claim was on its way: let it go at once
        await call("POST", path(id, "/release"));
        return false;
      }
      held = id;
      update(element, await answer.json());
      renewing = setInterval(renew, (lease * 1000) / 3);
      return true;
    }
    if (answer.status === 409 || answer.status === 404 || answer.status === 403) {
      const refused = await errorCode(answer);
      if (refused === "same_moderator" || refused === "lead_only") {
        element.dataset.claimed = "other";
        status.textContent = refusals[refused];
        return false;
      }
      const again = await call("GET", path(id));
      const item = again.ok ? await again.json() : null;
      if (item && item.status === "pending") {
        update(element, item);
        status.textContent = "Claimed by " + (item.claimed_by || "another moderator") + ": press J for the next item.";
      } else {
        status.textContent = "Someone else decided it.";
        drop(element);
        await open(index, true);
      }
      return false;
    }
    status.textContent = "That did not work (" + answer.status + "); try again.";
    return false;
  }

  async function renew() {
    if (!held || document.hidden) return; // a tab left in the background lets its claim run out
    const answer = await call("POST", path(held, "/claim"));
    if (!answer.ok) {
      stopRenewing();
      const element = items.find(function (e) { return e.dataset.reviewId === held; });
      held = null;
      if (element) field(element, "claim").textContent = "Your claim ran out; another moderator may take it.";
    }
  }

  function stopRenewing() {
    if (renewing) clearInterval(renewing);
    renewing = null;
  }

  async function release(element) {
    if (!element || held !== element.dataset.reviewId) return;
    const id = held;
    held = null;
    stopRenewing();
    await call("POST", path(id, "/release"));
    update(element, element.item);
  }

  function drop(element) {
    const at = items.indexOf(element);
    if (at >= 0) items.splice(at, 1);
    if (held === element.dataset.reviewId) { held = null; stopRenewing(); }
    element.remove();
    if (at >= 0 && at < index) index -= 1;
  }

  // Shown at once (looking needs no one's leave); the claim follows, and the reveal is counted
  // against the moderator's exposure limits: at a limit the page suggests a break.
  async function reveal(on) {
    const element = current();
    if (!element) return;
    const shown = on === undefined ? !element.classList.contains("revealed") : on;
    if (shown === element.classList.contains("revealed")) return;
    element.classList.toggle("revealed", shown);
    pressed(element, "reveal", shown);
    if (!shown) return;
    seen(element);
    await act(element);
  }

  // The moderator has looked at this item: a decision may follow, and it counts once against the
  // exposure limits.
  function seen(element) {
    if (element.dataset.counted) return;
    element.dataset.counted = "yes";
    counted(element.dataset.reviewId);
  }

  async function counted(id) {
    const answer = await countReveal(id);
    if (!answer.ok) return;
    const exposure = await answer.json();
    const pause = document.getElementById("break");
    if (exposure.break_due && pause && !pause.open && !pause.dataset.dismissed) {
      reveal(false); // never left revealed behind the dialog
      pause.querySelector("[data-field=exposure]").textContent = "You have revealed " + exposure.session +
        " items since you signed in and " + exposure.day + " today.";
      pause.showModal();
    }
  }

  async function zoom() {
    const element = current();
    if (!element || !(await act(element))) return;
    const zoomed = !element.classList.contains("zoomed");
    element.classList.toggle("zoomed", zoomed);
    pressed(element, "zoom", zoomed);
    // A frame stepped to stays the picture: the full-size preview is the deciding frame's, another
    // frame has only its strip picture (shown at its own size).
    const stepped = element.querySelector("[data-frame].selected");
    const chosen = element.querySelector("[data-frame].chosen");
    const frame = stepped && stepped !== chosen ? stepped.dataset.frame : null;
    field(element, "thumbnail").src = path(element.dataset.reviewId,
      frame !== null ? "/frames/" + frame : zoomed ? "/preview" : "/thumbnail");
    status.textContent = !zoomed ? "Fitted." : frame !== null
      ? "This frame at its own size (the full-size picture is the deciding frame's): Z again to fit."
      : "Full size: Z again to fit.";
  }

  function stepFrame(step) {
    const element = current();
    if (!element) return;
    const frames = Array.from(element.querySelectorAll("[data-frame]"));
    if (frames.length === 0) return;
    const at = frames.findIndex(function (e) { return e.classList.contains("selected"); });
    const next = frames[(at + step + frames.length) % frames.length];
    frames.forEach(function (e) { e.classList.toggle("selected", e === next); e.removeAttribute("aria-current"); });
    next.setAttribute("aria-current", "true");
    element.classList.remove("zoomed");
    pressed(element, "zoom", false);
    field(element, "thumbnail").src = path(element.dataset.reviewId, "/frames/" + next.dataset.frame);
    const caption = next.querySelector("span").textContent;
    const hidden = document.body.classList.contains("hide-scores") && !element.classList.contains("revealed");
    status.textContent = hidden ? caption.split(" · ")[0] : caption;
  }

  async function decide(label) {
    const element = current();
    if (!element || busy) return;
    if (blurOn && !element.dataset.counted) { // revealed at least once (held, with hold to peek)
      status.textContent = "Reveal the image first (Space): a decision needs a look.";
      return;
    }
    busy = true;
    try {
      if (!(await act(element))) return;
      const note = element.querySelector("textarea[name=note]").value.trim();
      const code = element.querySelector("select[name=reason]").value;
      const body = { label: label };
      if (note) body.note = note;
      if (code) body.reason_code = code;
      const answer = await call("POST", path(element.dataset.reviewId, "/decision"), body);
      const refused = answer.ok ? "" : await errorCode(answer);
      if (refusals[refused]) {
        status.textContent = refusals[refused];
      } else if (answer.ok || refused === "already_decided") {
        held = null;
        stopRenewing();
        // Its pending near-duplicates were decided with it (PDQ): they leave the list too, and the
        // moderator is told how many.
        const near = answer.ok ? ((await answer.json()).near_duplicates || []) : [];
        near.forEach(function (found) {
          const other = items.find(function (item) { return item.dataset.reviewId === found.id; });
          if (other) drop(other);
        });
        drop(element);
        await open(index, true);
        status.textContent = !answer.ok ? "Someone else decided it." : "Decided " + label + "." + (near.length
          ? " " + near.length + " near-duplicate" + (near.length === 1 ? " was" : "s were") + " decided with it."
          : "");
        refresh();
      } else {
        status.textContent = "That did not work (" + answer.status + "); try again.";
      }
    } finally {
      busy = false;
    }
  }

  // Escalate: hand the item to the leads, with the note as the reason; it leaves this queue.
  async function escalate() {
    const element = current();
    if (!element || busy || view === "leads") return;
    busy = true;
    try {
      const note = element.querySelector("textarea[name=note]").value.trim();
      const answer = await call("POST", path(element.dataset.reviewId, "/escalate"), note ? { note: note } : {});
      if (answer.ok) {
        held = null;
        stopRenewing();
        drop(element);
        await open(index, true);
        status.textContent = "Escalated to the leads.";
      } else if (answer.status === 409) {
        status.textContent = "Someone else holds or decided it.";
      } else {
        status.textContent = "That did not work (" + answer.status + "); try again.";
      }
    } finally {
      busy = false;
    }
  }

  // Skip: leave the item to the others; it goes to the end of this page's list.
  async function skip() {
    const element = current();
    if (!element) return;
    reset(element);
    await release(element);
    element.dataset.skipped = "yes";
    if (items.length > 1) {
      items.splice(index, 1);
      items.push(element);
      list.append(element);
    }
    await open(index, true);
    status.textContent = "Skipped: it is open to the others.";
  }

  // The list as the server has it now.
  async function refresh() {
    if (document.hidden) return;
    let body;
    try {
      const answer = await call("GET", "/reviews?status=pending&escalated=" + (view === "leads") + "&limit=" + PAGE);
      if (!answer.ok) return;
      body = await answer.json();
    } catch (error) {
      return; // offline a moment: the next poll tries again
    }
    if (busy) return;
    total.textContent = body.total + " waiting";
    const open_ = current();
    const known = new Map(items.map(function (e) { return [e.dataset.reviewId, e]; }));
    const fresh = new Set(body.items.map(function (item) { return item.id; }));
    const skipped = items.filter(function (e) { return e.dataset.skipped && fresh.has(e.dataset.reviewId); });
    const next = [];
    body.items.forEach(function (item) {
      const element = known.get(item.id) || render(item);
      if (known.has(item.id)) update(element, item);
      if (!element.dataset.skipped) next.push(element);
    });
    next.push.apply(next, skipped);
    let lost = false;
    items.forEach(function (element) {
      if (next.indexOf(element) >= 0) return;
      if (element === open_ && held === element.dataset.reviewId) { next.push(element); return; } // held: stays
      if (element === open_) lost = true;
      element.remove();
    });
    const moved = next.length !== items.length || next.some(function (element, at) { return items[at] !== element; });
    items = next;
    // Moved only when the order changed (moving the focused item would take the focus away).
    if (moved) {
      const focused = document.activeElement;
      items.forEach(function (element, at) {
        if (list.children[at] !== element) list.insertBefore(element, list.children[at] || null);
      });
      if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus({ preventScroll: true });
    }
    if (open_ && !lost && items.indexOf(open_) >= 0) {
      index = items.indexOf(open_);
    } else {
      index = Math.min(Math.max(index, 0), items.length - 1);
      await open(firstOpen(), true);
      if (lost) status.textContent = "That item left the queue (decided or escalated elsewhere); here is the next.";
    }
    empty.hidden = items.length > 0;
  }

  // The oldest item no one else holds and this moderator may decide (the first, when there is none).
  function firstOpen() {
    const at = items.findIndex(function (e) {
      return e.dataset.claimed !== "other" && !(e.item.appeal && e.item.appeal.decided_by === me);
    });
    return at >= 0 ? at : 0;
  }

  list.addEventListener("click", function (event) {
    const target = event.target.closest("button");
    if (!target) return;
    if (target.dataset.decision) decide(target.dataset.decision);
    else if (target.dataset.action === "reveal") { if (!peek) reveal(); }
    else if (target.dataset.action === "escalate") escalate();
    else if (target.dataset.action === "zoom") zoom();
    else if (target.dataset.action === "skip") skip();
  });

  // Writing a note or choosing a reason is acting on the item: it claims it.
  list.addEventListener("focusin", function (event) {
    const element = current();
    if (element && event.target.closest("textarea, select") && element.contains(event.target)) act(element);
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, textarea, select, dialog")) return;
    const key = event.key.toLowerCase();
    if (key === "a") decide("adult");
    else if (key === "s") decide("safe");
    else if (key === " ") { event.preventDefault(); if (!event.repeat) reveal(peek ? true : undefined); }
    else if (key === "e") escalate();
    else if (key === "z") zoom();
    else if (key === "n") skip();
    else if (key === "j") open(index + 1);
    else if (key === "k") open(index - 1);
    else if (key === "arrowright") { event.preventDefault(); stepFrame(1); }
    else if (key === "arrowleft") { event.preventDefault(); stepFrame(-1); }
    else if (key === "?") document.getElementById("help").showModal();
  });

  // Hold to peek: the picture shows only while Space (or the button) is held.
  // Whatever ends the hold ends the peek: the key or the pointer let go anywhere (a dialog included),
  // the window losing focus, the tab hidden.
  let peeking = false;
  function unpeek() { if (peek) { peeking = false; reveal(false); } }
  document.addEventListener("keyup", function (event) { if (peek && event.key === " ") unpeek(); });
  list.addEventListener("pointerdown", function (event) {
    if (peek && event.target.closest('[data-action="reveal"]')) { peeking = true; reveal(true); }
  });
  ["pointerup", "pointercancel"].forEach(function (type) {
    document.addEventListener(type, function () { if (peeking) unpeek(); });
  });
  window.addEventListener("blur", unpeek);
  document.addEventListener("visibilitychange", function () { if (document.hidden) unpeek(); });
  const pause = document.getElementById("break");
  if (pause) pause.addEventListener("close", function () { if (pause.returnValue === "continue") pause.dataset.dismissed = "yes"; });

  // The tab closes or navigates away: the claim is released (a beacon outlives the page).
  window.addEventListener("pagehide", function () {
    if (!held) return;
    const form = new FormData();
    form.append("csrf_token", token);
    navigator.sendBeacon(path(held, "/release"), form);
    held = null;
    stopRenewing();
  });

  (async function start() {
    await refresh();
    if (items.length) await open(index);
    else status.textContent = "Nothing to review.";
    setInterval(function () {
      refresh();
      items.forEach(function (element) { field(element, "age").textContent = ago(element.item.created) + " ago"; });
    }, POLL_MS);
  })();
})();

// One item's page: reveal (counted, as in the queue) and full size, in place.
(function () {
  const element = document.querySelector("[data-item-page]");
  if (!element) return;
  const picture = element.querySelector('[data-field="thumbnail"]');
  if (!picture) return;
  const thumbnail = picture.src;
  const peek = document.body.classList.contains("hold-to-peek");
  const reveal = element.querySelector('[data-action="reveal"]');
  let counted = false;
  function show(on) {
    element.classList.toggle("revealed", on);
    reveal.setAttribute("aria-pressed", on ? "true" : "false");
    reveal.textContent = on ? "Blur again" : "Reveal";
    if (on && !counted) {
      counted = true;
      countReveal(element.dataset.reviewId);
    }
  }
  if (document.body.classList.contains("no-blur")) show(true); // nothing hides it: it is seen, and counted
  if (peek) { // shown only while held, as in the queue
    reveal.addEventListener("pointerdown", function () { show(true); });
    ["pointerup", "pointercancel"].forEach(function (type) {
      document.addEventListener(type, function () { if (element.classList.contains("revealed")) show(false); });
    });
    window.addEventListener("blur", function () { show(false); });
  }
  element.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const on = button.getAttribute("aria-pressed") !== "true";
    if (button.dataset.action === "reveal") {
      if (!peek) show(on);
    } else if (button.dataset.action === "zoom") {
      button.setAttribute("aria-pressed", on ? "true" : "false");
      element.classList.toggle("zoomed", on);
      button.textContent = on ? "Fit" : "Full size";
      picture.src = on ? picture.dataset.preview : thumbnail;
    }
  });
})();

// The search page: a thumbnail revealed by a click, or held with hold to peek (counted, as in the
// queue; a bulk decision takes only the revealed ones).
(function () {
  const table = document.querySelector("table.results");
  if (!table) return;
  const peek = document.body.classList.contains("hold-to-peek");
  function show(row, on) {
    const button = row.querySelector('[data-action="reveal-row"]');
    row.classList.toggle("revealed", on);
    button.setAttribute("aria-pressed", on ? "true" : "false");
    if (on && !row.dataset.counted) {
      row.dataset.counted = "yes";
      countReveal(row.dataset.reviewId);
    }
  }
  function rowOf(event) {
    const button = event.target.closest('button[data-action="reveal-row"]');
    return button ? button.closest("tr[data-review-id]") : null;
  }
  if (peek) { // shown only while held
    table.addEventListener("pointerdown", function (event) { const row = rowOf(event); if (row) show(row, true); });
    ["pointerup", "pointercancel"].forEach(function (type) {
      document.addEventListener(type, function () {
        table.querySelectorAll("tr.revealed").forEach(function (row) { show(row, false); });
      });
    });
  }
  table.addEventListener("click", function (event) {
    const row = rowOf(event);
    if (row && !peek) show(row, !row.classList.contains("revealed"));
  });
})();

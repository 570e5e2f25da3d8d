// The queue page: one item at a time, claimed when opened, decided by button or key, the next one
// without a reload. Everything goes through the review API with the session and its CSRF token.
"use strict";
(function () {
  const list = document.querySelector("[data-queue]");
  if (!list) return;
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const status = document.getElementById("status");
  const empty = document.getElementById("empty");
  const template = document.getElementById("item-template");
  let items = Array.from(list.querySelectorAll("[data-review-id]"));
  let index = 0;

  function call(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  function field(element, name) { return element.querySelector('[data-field="' + name + '"]'); }

  function render(item) {
    const element = template.content.firstElementChild.cloneNode(true);
    element.dataset.reviewId = item.id;
    element.setAttribute("aria-label", "Item " + item.id);
    field(element, "thumbnail").src = "/reviews/" + encodeURIComponent(item.id) + "/thumbnail";
    field(element, "reason").textContent = item.reason;
    field(element, "model").textContent = item.model;
    field(element, "age").textContent = item.created;
    field(element, "refs").textContent = item.refs.map(function (ref) { return ref.ref + " (" + ref.key + ")"; }).join(", ");
    renderFrames(element, item);
    const scores = document.createElement("ul");
    scores.className = "scores";
    scores.setAttribute("aria-label", "Scores");
    Object.entries(item.scores).forEach(function ([name, value]) {
      const row = document.createElement("li");
      row.className = "score";
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.value = value;
      meter.setAttribute("aria-label", name);
      const number = document.createElement("span");
      number.textContent = value.toFixed(3);
      row.append(label, " ", meter, " ", number);
      scores.append(row);
    });
    field(element, "scores").replaceChildren(scores);
    return element;
  }

  // An animation or a video: say so before anything else, and show every classified frame with its
  // adult score (a video's with its time), the one that decided the verdict marked (its picture is
  // the big one).
  function when(frame) {
    return frame.time_s === null || frame.time_s === undefined ? "?" : frame.time_s.toFixed(1) + " s";
  }

  function renderFrames(element, item) {
    const frames = item.frames;
    const note = field(element, "animation");
    const strip = field(element, "strip");
    if (frames.count <= 1 && !frames.video) { note.hidden = true; strip.hidden = true; return; }
    note.hidden = false;
    const decided = frames.classified.find(function (frame) { return frame.index === frames.chosen; });
    note.textContent = frames.video
      ? "Video: " + frames.classified.length + " sampled frames judged. The picture is the frame at " +
        (decided ? when(decided) : "?") + ", the one that decided the verdict; check every frame below before deciding."
      : "Animation: " + frames.count + " frames, " + frames.classified.length +
        " classified. The picture is frame " + frames.chosen +
        ", the one that decided the verdict; check every frame below before deciding.";
    field(element, "thumbnail").alt = "Image under review: the frame that decided the verdict";
    strip.hidden = false;
    strip.replaceChildren();
    frames.classified.forEach(function (frame) {
      const entry = document.createElement("li");
      const chosen = frame.index === frames.chosen;
      if (chosen) entry.className = "chosen";
      const picture = document.createElement("img");
      picture.alt = frames.video ? "Frame at " + when(frame) : "Frame " + frame.index;
      picture.src = "/reviews/" + encodeURIComponent(item.id) + "/frames/" + frame.position;
      const caption = document.createElement("span");
      caption.textContent = (frames.video ? when(frame) : "frame " + frame.index) + " · adult " + frame.adult.toFixed(3) +
        (chosen ? " · decided the verdict" : "");
      entry.append(picture, caption);
      strip.append(entry);
    });
  }

  async function loadMore() {
    const answer = await call("GET", "/reviews?status=pending&limit=50");
    if (!answer.ok) return;
    const known = new Set(items.map(function (e) { return e.dataset.reviewId; }));
    (await answer.json()).items.forEach(function (item) {
      if (known.has(item.id)) return;
      const element = render(item);
      list.append(element);
      items.push(element);
    });
  }

  async function open(next) {
    items.forEach(function (e) {
      e.classList.remove("current");
      e.querySelectorAll("img").forEach(function (img) { img.classList.remove("revealed"); }); // blurred again
    });
    if (items.length === 0) await loadMore();
    empty.hidden = items.length > 0;
    if (items.length === 0) { status.textContent = "Nothing to review."; return; }
    index = Math.max(0, Math.min(next, items.length - 1));
    const element = items[index];
    element.classList.add("current");
    element.focus();
    const id = element.dataset.reviewId;
    const answer = await call("POST", "/reviews/" + encodeURIComponent(id) + "/claim");
    const claim = field(element, "claim");
    if (answer.ok) {
      element.dataset.claimed = "mine";
      claim.textContent = "Claimed by you";
    } else if (answer.status === 409) {
      const item = await (await call("GET", "/reviews/" + encodeURIComponent(id))).json();
      element.dataset.claimed = "other";
      claim.textContent = item.claimed_by ? "Claimed by " + item.claimed_by : "Claimed by another moderator";
    } else if (answer.status === 404) {
      drop(element);
      return open(index);
    }
    status.textContent = "Item " + (index + 1) + " of " + items.length;
  }

  function drop(element) {
    const at = items.indexOf(element);
    if (at >= 0) items.splice(at, 1);
    element.remove();
  }

  async function decide(label) {
    const element = items[index];
    if (!element) return;
    if (element.dataset.claimed === "other") { status.textContent = field(element, "claim").textContent; return; }
    const answer = await call("POST", "/reviews/" + encodeURIComponent(element.dataset.reviewId) + "/decision", { label: label });
    if (answer.ok || answer.status === 409) {
      // Its pending near-duplicates were decided with it (PDQ): they leave the list too, and the
      // moderator is told how many, after the next item opens.
      const near = answer.ok ? ((await answer.json()).near_duplicates || []) : [];
      near.forEach(function (found) {
        const other = items.find(function (item) { return item.dataset.reviewId === found.id; });
        if (other) drop(other);
      });
      drop(element);
      await open(index);
      status.textContent = !answer.ok ? "Someone else decided it." : "Decided " + label + "." + (near.length
        ? " " + near.length + " near-duplicate" + (near.length === 1 ? " was" : "s were") + " decided with it."
        : "");
    } else {
      status.textContent = "That did not work (" + answer.status + "); try again.";
    }
  }

  function reveal() {
    const element = items[index];
    if (!element) return;
    const shown = !element.querySelector("img").classList.contains("revealed");
    element.querySelectorAll("img").forEach(function (img) { img.classList.toggle("revealed", shown); });
  }

  list.addEventListener("click", function (event) {
    const target = event.target.closest("button");
    if (!target) return;
    if (target.dataset.decision) decide(target.dataset.decision);
    else if (target.dataset.action === "reveal") reveal();
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, textarea, select, dialog")) return;
    const key = event.key;
    if (key === "a" || key === "A") decide("adult");
    else if (key === "s" || key === "S") decide("safe");
    else if (key === " ") { event.preventDefault(); reveal(); }
    else if (key === "j" || key === "J") open(index + 1);
    else if (key === "k" || key === "K") open(index - 1);
    else if (key === "?") document.getElementById("help").showModal();
    else return;
  });

  open(0);
})();

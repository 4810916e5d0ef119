// Sandbox EHR page: draft orders, hook calls to the real service, cards, suggestions and feedback.
// No card logic lives here: the service decides every card; this page only shows them and acts on clicks.
// Everything the service sends is put in the page as text, except card Markdown, which the server renders
// with raw HTML off (/sandbox/api/markdown) and which the page's CSP keeps script-free anyway.
"use strict";

const state = {
  fixture: null,        // name of the chosen fixture
  drafts: [],           // draft order resources shown on the page (sent as context.draftOrders)
  editable: new Set(),  // "Type/id" of drafts offered the product/dose editor
  staged: [],           // accepted updates/deletes of stored resources, applied to the record on each fire
  storedOrders: [],     // stored MedicationRequests a draft may renew ({ref, label, status})
  created: 0,           // counter for ids of resources created by suggestions
  busy: false,
  patientId: null,      // the fixture patient's id, for SMART launches from card links
};

// ---------------------------------------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);
const ref = (resource) => `${resource.resourceType}/${resource.id}`;
const clone = (value) => JSON.parse(JSON.stringify(value));

async function callJson(method, url, body) {
  const started = performance.now();
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  return { status: response.status, ok: response.ok, json, text, ms: Math.round(performance.now() - started) };
}

function setStatus(message, kind) {
  const status = $("#status");
  status.textContent = message;
  status.dataset.kind = kind || "info";
}

function logExchange(title, value) {
  const log = $("#exchange-log");
  log.textContent += `── ${title} ──\n${JSON.stringify(value, null, 2)}\n\n`;
}

function rfc3339Now() {
  return new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
}

function codingText(concept) {
  if (!concept || typeof concept !== "object") return "";
  const coding = (concept.coding || [])[0] || {};
  return concept.text || coding.display || coding.code || "";
}

function orderLabel(resource) {
  if (resource.resourceType === "MedicationRequest") {
    return codingText(resource.medicationCodeableConcept)
      || (resource.medicationReference && (resource.medicationReference.display || resource.medicationReference.reference))
      || "(medication not named)";
  }
  return codingText(resource.code) || ref(resource);
}

function doseText(resource) {
  return ((resource.dosageInstruction || [])[0] || {}).text || "";
}

// ---------------------------------------------------------------------------------------------- fixture

async function loadFixture(name) {
  state.fixture = null;
  state.drafts = [];
  state.staged = [];
  state.storedOrders = [];
  clearCards("Fire a hook to see the service's cards.");
  $("#exchange-log").textContent = "";
  setFireButtons();
  if (!name) {
    $("#banner").hidden = true;
    renderDrafts();
    return;
  }
  const answer = await callJson("GET", `/sandbox/api/fixtures/${encodeURIComponent(name)}`);
  if (!answer.ok) {
    setStatus(`Could not load ${name}: HTTP ${answer.status}`, "error");
    return;
  }
  const fixture = answer.json;
  state.fixture = fixture.name;
  state.drafts = fixture.drafts.map((d) => d.resource);
  state.editable = new Set(fixture.drafts.filter((d) => d.editable).map((d) => ref(d.resource)));
  state.storedOrders = fixture.stored_orders || [];
  const patient = fixture.patient || {};
  state.patientId = patient.id || null;
  $("#patient-name").textContent = patient.name || "(no name)";
  $("#patient-facts").textContent = [patient.gender, patient.birthDate && `born ${patient.birthDate}`, patient.id && `Patient/${patient.id}`]
    .filter(Boolean).join(" · ");
  $("#fixture-description").textContent = fixture.description;
  $("#expected").textContent = fixture.expected.length ? fixture.expected.join(", ") : "none (no cards)";
  $("#banner").hidden = false;
  renderDrafts();
  setStatus(`Loaded ${fixture.name}. Edit the order if you like, then fire a hook.`);
}

// ---------------------------------------------------------------------------------------------- drafts

function productSelect(draft) {
  const select = el("select", { className: "product", "aria-label": "Product" });
  const options = $("#product-options").content.cloneNode(true);
  select.append(options);
  const current = ((draft.medicationCodeableConcept || {}).coding || []).map((c) => c.code);
  const match = [...select.options].find((o) => current.includes(o.value));
  if (match) {
    match.selected = true;
  } else {
    select.prepend(el("option", { value: "", selected: true }, `As in the fixture: ${orderLabel(draft)}`));
  }
  select.addEventListener("change", () => {
    const option = select.selectedOptions[0];
    if (!option || !option.value) return;
    const display = option.dataset.display;
    draft.medicationCodeableConcept = { coding: [{ system: option.dataset.system, code: option.value, display }], text: display };
    delete draft.medicationReference;
    renderDrafts();
  });
  return select;
}

function doseInput(draft) {
  const input = el("input", { type: "text", className: "dose", value: doseText(draft), "aria-label": "Dose", placeholder: "e.g. 1 mg by mouth every 12 hours" });
  input.addEventListener("change", () => {
    draft.dosageInstruction = draft.dosageInstruction && draft.dosageInstruction.length ? draft.dosageInstruction : [{}];
    draft.dosageInstruction[0].text = input.value;
  });
  return input;
}

function renewalSelect(draft) {
  // A renewal or dose change names the order it replaces (priorPrescription), so it is not a duplicate.
  const current = (draft.priorPrescription || {}).reference || "";
  const select = el("select", { className: "renews", "aria-label": "Renews" },
    el("option", { value: "" }, "nothing (a new order)"),
    ...state.storedOrders.map((order) =>
      el("option", { value: order.ref, selected: order.ref === current }, `${order.label} · ${order.ref} · ${order.status || "?"}`)));
  select.addEventListener("change", () => {
    if (select.value) draft.priorPrescription = { reference: select.value };
    else delete draft.priorPrescription;
  });
  return select;
}

function renderDrafts() {
  const list = $("#drafts");
  list.replaceChildren();
  if (!state.drafts.length) {
    list.append(el("li", { className: "muted" }, state.fixture ? "No draft orders left." : "No patient chosen."));
  }
  for (const draft of state.drafts) {
    const item = el("li", { dataset: { ref: ref(draft), type: draft.resourceType } },
      el("span", { className: "type" }, draft.resourceType === "MedicationRequest" ? "Rx" : draft.resourceType === "ServiceRequest" ? "Lab" : draft.resourceType),
      el("span", { className: "label" }, orderLabel(draft)),
      el("span", { className: "muted ref" }, `${ref(draft)} · ${draft.status || "?"}`));
    if (state.editable.has(ref(draft))) {
      item.append(el("div", { className: "editor" },
        el("label", {}, "Product ", productSelect(draft)),
        el("label", {}, "Dose ", doseInput(draft)),
        state.storedOrders.length ? el("label", {}, "Renews ", renewalSelect(draft)) : null));
    } else if (doseText(draft)) {
      item.append(el("div", { className: "muted" }, doseText(draft)));
    }
    list.append(item);
  }
  const staged = $("#staged");
  staged.replaceChildren(...state.staged.map((change) =>
    el("li", { dataset: { ref: change.ref } }, el("span", { className: "type" }, change.type), el("span", { className: "label" }, change.description))));
  $("#staged-box").hidden = !state.staged.length;
  setFireButtons();
}

// An order hook needs a draft order (order-select one to select): without one its button is off and says so,
// rather than answering "drafts must be a non-empty list" (a pv-* patient's chart has none).
function setFireButtons() {
  const orders = state.drafts.filter((d) => d.resourceType === "MedicationRequest").length;
  const off = [];
  document.querySelectorAll(".fire-button").forEach((button) => {
    const needs = button.dataset.drafts === "yes" && (button.dataset.hook === "order-select" ? !orders : !state.drafts.length);
    button.disabled = !state.fixture || state.busy || needs;
    button.title = needs ? "No draft order on the page: nothing to order" : "";
    if (state.fixture && needs) off.push(button.dataset.hook);
  });
  const hint = $("#fire-hint");
  hint.hidden = !off.length;
  hint.textContent = off.length
    ? `${off.join(" and ")} need${off.length === 1 ? "s" : ""} a draft medication order; this patient has none on the page (open the chart with patient-view).`
    : "";
}

// ---------------------------------------------------------------------------------------------- firing

function clearCards(message) {
  $("#cards").replaceChildren(el("p", { className: "muted" }, message));
  $("#dismissed").replaceChildren();
  showHeldBack([]);
}

// What the service's alert memory held back (its --dev answers name it in an extension): a card missing
// because it was already shown is not "no advice", so the page says which findings and why.
const HELD_BACK = "org.example.tacrolimus-cds.held-back";

function showHeldBack(held) {
  const box = $("#held-back");
  box.replaceChildren();
  box.hidden = !held.length;
  if (!held.length) return;
  box.append(
    el("h3", {}, `Held back: ${held.length} finding${held.length === 1 ? "" : "s"} already shown`),
    el("ul", {}, ...held.map((h) => el("li", { dataset: { finding: h.id } },
      el("strong", {}, `${h.id} (${h.indicator})`), h.summary ? ` ${h.summary}` : "", el("span", { className: "muted" }, ` — ${h.why}.`)))),
    el("p", { className: "muted" }, "Press \u201cClear alert memory\u201d to see them again."));
}

async function clearAlertMemory() {
  const answer = await callJson("POST", "/sandbox/api/alert-memory/clear", {});
  if (!answer.ok) {
    setStatus(`Could not clear the alert memory: HTTP ${answer.status}`, "error");
    return;
  }
  showHeldBack([]);
  const n = answer.json.forgotten;
  setStatus(`Alert memory cleared (${n} remembered finding${n === 1 ? "" : "s"} forgotten): the next fire shows every finding again.`);
}

async function fire(hook) {
  if (!state.fixture || state.busy) return;
  state.busy = true;
  setFireButtons();
  const via = document.querySelector("input[name=via]:checked").value;
  setStatus(`Calling ${hook}…`);
  try {
    const staged = state.staged.map((c) => ({ type: c.type, ref: c.ref, resource: c.resource }));
    const built = await callJson("POST", "/sandbox/api/request", { fixture: state.fixture, hook, via, drafts: state.drafts, staged });
    if (!built.ok) {
      setStatus(`Could not build the request: ${(built.json && built.json.error) || built.status}`, "error");
      return;
    }
    const { service, request } = built.json;
    const answer = await callJson("POST", service.url, request);
    logExchange(`request → POST ${service.url}`, request);
    logExchange(`response ← HTTP ${answer.status} (${answer.ms} ms)`, answer.json || answer.text);
    if (!answer.ok || !answer.json || !Array.isArray(answer.json.cards)) {
      clearCards("The service did not answer with cards.");
      setStatus(`${hook}: HTTP ${answer.status} from ${service.url}: ${answer.text.slice(0, 300)}`, "error");
      return;
    }
    const held = ((answer.json.extension || {})[HELD_BACK]) || [];
    await renderCards(answer.json.cards, service.id, held.length);
    showHeldBack(held);
    const n = answer.json.cards.length;
    setStatus(`${hook} via ${via}: HTTP ${answer.status}, ${n} card${n === 1 ? "" : "s"} in ${answer.ms} ms`
      + (held.length ? `, ${held.length} finding${held.length === 1 ? "" : "s"} held back` : ""));
    // As an EHR sidebar opens: the cards come into view (on a narrow screen they are below the order).
    $("#cards-heading").scrollIntoView({ block: "start" });
  } catch (error) {
    setStatus(`${hook} failed: ${error}`, "error");
  } finally {
    state.busy = false;
    setFireButtons();
  }
}

// ---------------------------------------------------------------------------------------------- cards

async function renderMarkdown(texts) {
  if (!texts.length) return [];
  const answer = await callJson("POST", "/sandbox/api/markdown", { texts });
  if (!answer.ok) return null;
  return answer.json.html;
}

function safeLink(url, label) {
  let parsed = null;
  try { parsed = new URL(url); } catch (e) { parsed = null; }
  if (!parsed || !["http:", "https:"].includes(parsed.protocol)) return el("span", { className: "bad-link" }, `${label} (link not shown: ${url})`);
  return el("a", { href: parsed.href, target: "_blank", rel: "noopener noreferrer" }, label);
}

// A card's `smart` link, launched as an EHR does (SMART App Launch): the development authorization server of
// /sandbox/fhir mints a launch id bound to this patient and the link's appContext, then the app opens in a
// new tab with iss (this sandbox's FHIR base) and launch.
function smartLaunchButton(link) {
  const button = el("button", { type: "button", className: "smart-launch" }, `${link.label} (SMART app)`);
  button.addEventListener("click", async () => {
    let target = null;
    try { target = new URL(link.url); } catch (e) { target = null; }
    if (!target || !["http:", "https:"].includes(target.protocol) || !state.patientId) {
      setStatus(`The SMART link cannot be launched: ${link.url}`);
      return;
    }
    const form = new URLSearchParams({ patient: state.patientId });
    if (typeof link.appContext === "string") form.set("appContext", link.appContext);
    const response = await fetch("/sandbox/fhir/auth/launch", { method: "POST", body: form });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok || !answer.launch) {
      setStatus(`The SMART launch failed: ${answer.error_description || response.status}`);
      return;
    }
    target.searchParams.set("iss", `${window.location.origin}/sandbox/fhir`);
    target.searchParams.set("launch", answer.launch);
    window.open(target.href, "_blank", "noopener");
  });
  return button;
}

async function renderCards(cards, serviceId, heldBack) {
  const details = await renderMarkdown(cards.map((c) => (typeof c.detail === "string" ? c.detail : "")));
  const box = $("#cards");
  box.replaceChildren();
  $("#dismissed").replaceChildren();
  if (!cards.length) {
    box.append(el("p", { className: "muted no-cards" }, heldBack
      ? "No cards: everything the service found was already shown (below)."
      : "No cards: the service has no advice for this order or chart."));
    return;
  }
  cards.forEach((card, index) => box.append(cardElement(card, details ? details[index] : null, serviceId)));
}

function cardElement(card, detailHtml, serviceId) {
  const indicator = ["critical", "warning", "info"].includes(card.indicator) ? card.indicator : "unknown";
  const source = card.source || {};
  const topic = source.topic || {};
  const findings = ((card.extension || {})["org.example.tacrolimus-cds.findings"] || []).map((f) => f.id);
  const node = el("article", { className: `card indicator-${indicator}`, dataset: { uuid: card.uuid || "", indicator, topic: topic.code || "" } },
    el("header", {},
      el("span", { className: "badge" }, indicator),
      el("h3", { className: "card-summary" }, card.summary || "")),
    el("p", { className: "card-source muted" },
      [topic.display || topic.code, source.label].filter(Boolean).join(" · "),
      findings.length ? el("span", { className: "findings" }, ...findings.map((id) => el("span", { className: "chip" }, id))) : null));

  const detail = el("div", { className: "card-detail" });
  if (detailHtml !== null && detailHtml !== undefined) {
    detail.innerHTML = detailHtml; // rendered server-side by markdown-it with raw HTML off; CSP blocks scripts
    detail.querySelectorAll("a").forEach((a) => a.replaceWith(safeLink(a.getAttribute("href") || "", a.textContent)));
  } else {
    detail.textContent = card.detail || "";
  }
  if (card.detail) node.append(detail);

  if (Array.isArray(card.suggestions) && card.suggestions.length) {
    const box = el("div", { className: "suggestions" });
    for (const suggestion of card.suggestions) {
      const button = el("button", { type: "button", className: `suggestion${suggestion.isRecommended ? " recommended" : ""}`, dataset: { uuid: suggestion.uuid || "" } }, suggestion.label || "(no label)");
      button.addEventListener("click", () => acceptSuggestion(card, suggestion, button, serviceId, node));
      box.append(button);
    }
    node.append(box);
  }

  if (Array.isArray(card.links) && card.links.length) {
    node.append(el("ul", { className: "links" }, ...card.links.map((link) =>
      el("li", {}, link.type === "smart" ? smartLaunchButton(link) : safeLink(link.url, link.label)))));
  }

  const reasons = Array.isArray(card.overrideReasons) ? card.overrideReasons : [];
  const select = el("select", { className: "dismiss-reason", "aria-label": "Reason for dismissing" },
    el("option", { value: "" }, "Dismiss without a reason"),
    ...reasons.map((reason, i) => el("option", { value: String(i) }, reason.display || reason.code)));
  const dismiss = el("button", { type: "button", className: "dismiss-button" }, "Dismiss");
  dismiss.addEventListener("click", () => dismissCard(card, reasons[select.value === "" ? -1 : Number(select.value)], serviceId, node));
  node.append(el("footer", { className: "dismiss" }, select, dismiss));
  return node;
}

// ---------------------------------------------------------------------------------------------- actions

function applyAction(action) {
  const type = action.type;
  const resource = action.resource ? clone(action.resource) : null;
  if (type === "create" && resource) {
    if (!resource.id) resource.id = `sandbox-${++state.created}`;
    state.drafts.push(resource);
    state.editable.delete(ref(resource));
    return;
  }
  const target = action.resourceId || (resource && resource.id ? ref(resource) : null);
  if (!target) return;
  const index = state.drafts.findIndex((d) => ref(d) === target);
  if (type === "delete") {
    if (index >= 0) state.drafts.splice(index, 1);
    else state.staged.push({ type: "delete", ref: target, description: action.description || `Delete ${target}` });
  } else if (type === "update" && resource) {
    if (index >= 0) state.drafts[index] = resource;
    else {
      state.staged = state.staged.filter((c) => c.ref !== target);
      state.staged.push({ type: "update", ref: target, description: action.description || `Update ${target}`, resource });
    }
  }
}

async function sendFeedback(serviceId, item) {
  const body = { feedback: [item] };
  const url = `/cds-services/${encodeURIComponent(serviceId)}/feedback`;
  const answer = await callJson("POST", url, body);
  logExchange(`feedback → POST ${url} (HTTP ${answer.status})`, body);
  return answer;
}

async function acceptSuggestion(card, suggestion, button, serviceId, node) {
  const actions = Array.isArray(suggestion.actions) ? suggestion.actions : [];
  // Deletes, then creates, then updates, as the spec asks of a multi-action suggestion.
  for (const type of ["delete", "create", "update"]) actions.filter((a) => a.type === type).forEach(applyAction);
  renderDrafts();
  button.disabled = true;
  button.textContent = `✓ ${suggestion.label}`;
  if (card.selectionBehavior === "at-most-one") node.querySelectorAll(".suggestion").forEach((b) => { b.disabled = true; });
  if (!card.uuid || !suggestion.uuid) {
    setStatus("Suggestion applied (no feedback: the card or suggestion has no uuid).");
    return;
  }
  const answer = await sendFeedback(serviceId, {
    card: card.uuid, outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }], outcomeTimestamp: rfc3339Now(),
  });
  setStatus(answer.ok ? `Suggestion applied; feedback stored (accepted).` : `Suggestion applied; feedback failed: HTTP ${answer.status}`, answer.ok ? "info" : "error");
}

async function dismissCard(card, reason, serviceId, node) {
  node.remove();
  const line = el("p", { className: "dismissed-line", dataset: { uuid: card.uuid || "" } },
    `Dismissed: ${card.summary || ""}`, reason ? ` — ${reason.display || reason.code}` : " — no reason given");
  $("#dismissed").append(line);
  if (!card.uuid) return;
  const item = { card: card.uuid, outcome: "overridden", outcomeTimestamp: rfc3339Now() };
  if (reason) item.overrideReason = { reason: { system: reason.system, code: reason.code, display: reason.display } };
  const answer = await sendFeedback(serviceId, item);
  setStatus(answer.ok ? "Card dismissed; feedback stored (overridden)." : `Card dismissed; feedback failed: HTTP ${answer.status}`, answer.ok ? "info" : "error");
}

// ---------------------------------------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  $("#fixture").addEventListener("change", (event) => loadFixture(event.target.value));
  document.querySelectorAll(".fire-button").forEach((button) => button.addEventListener("click", () => fire(button.dataset.hook)));
  $("#clear-memory").addEventListener("click", clearAlertMemory);
  if ($("#fixture").value) loadFixture($("#fixture").value);
  document.body.dataset.ready = "true";
});

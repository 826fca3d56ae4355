// The dashboard page: reads the API of the service that serves it (fetch JSON, EventSource),
// as any dashboard would. Plain JavaScript, no library; data is always written as text.
"use strict";

const PAGE_SIZE = 20;
const MAX_PAGE = 1_000_000 / PAGE_SIZE + 1; // the API skips 1,000,000 alerts at most (MAX_OFFSET)
const RETRY_MS = 10000; // after a refused stream (a `fin` trop-de-flux, or a 503: from a proxy), as the API says
const KINDS = {
  "equipement-incompatible": "Équipement incompatible",
  "equipement-partiel": "Équipement partiellement compatible",
  "connectivite-insuffisante": "Connexion insuffisante",
  "ent-indisponible": "ENT injoignable",
  "formation-insuffisante": "Formation insuffisante",
};
const REASONS = {
  "os-version": "version du système hors des bornes de la ressource",
  "os-absent": "système requis absent",
  "browser-version": "version du navigateur hors des bornes de la ressource",
  "browser-absent": "navigateur requis absent",
  "exigence-vide": "exigence vide dans la ressource",
  "aucun-poste": "aucun poste déclaré",
  "outil-manquant": "outil en nombre insuffisant",
  "part-compatible": "trop peu de postes compatibles",
  debit: "débit insuffisant",
  ent: "ENT injoignable",
  formation: "enseignants pas assez formés",
};
const TYPES = { ecole: "école", college: "collège", lycee: "lycée", erea: "EREA", autre: "autre" };
const VERDICTS = { compatible: "compatible", partiel: "partiellement compatible", incompatible: "incompatible" };
const SERIES = [
  ["compatibles", "compatible"],
  ["partiels", "partiel"],
  ["incompatibles", "incompatible"],
];
const FILTERS = ["code_academie", "code_departement", "responsable_type", "responsable_code", "kind", "state"];
const STREAM_FILTERS = ["code_academie", "code_departement", "responsable_type", "responsable_code", "kind"]; // what /alertes/flux filters on

const $ = (id) => document.getElementById(id);
let territoires = {}; // code académie -> its départements
let nomsAcademies = {}; // code académie -> its name
let current = null; // the view shown: {name, refresh(), concerns(alert)}
const TITLE = document.title; // the page's; each view's title before it (a tab, a screen reader)
let lastUai = ""; // the établissement viewed last: the equipment simulation starts from its lots
const recent = new Set(); // alert ids changed live, highlighted in the list (the last RECENT_MAX)
const RECENT_MAX = 1000;
const PENDING_READ_MS = 5000; // a view read again while a re-evaluation goes on (readAgainWhilePending)
let pendingRead = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function announce(text) {
  $("annonce").textContent = text;
}

function showError(text) {
  $("erreur").textContent = text;
  $("erreur").hidden = !text;
}

async function api(path, posted) {
  const request = { headers: { Accept: "application/json" } };
  if (posted !== undefined) {
    Object.assign(request, { method: "POST", body: JSON.stringify(posted) });
    request.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, request);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(refusal(body, response.status));
  return body;
}

// What a refused request's answer says (the API's `detail`: a text, or one per parameter).
function refusal(body, status) {
  const detail = body && body.detail;
  const text = Array.isArray(detail) ? detail.map((d) => d.msg).join(" ; ") : detail;
  return text || `le service a répondu ${status}`;
}

// Names where the service gives them (an alert's), the code beside: what a reader reads, and
// what they search the annuaire with.
const etabLink = (uai, nom) =>
  el("a", { href: `#/etablissement/${encodeURIComponent(uai)}` }, nom ? `${nom} (${uai})` : uai);
const resourceLink = (id, title) =>
  el("a", { href: `#/ressource/${encodeURIComponent(id)}`, title: title ? id : null }, title || id);
// Instants in Paris' time, whatever the viewer's computer says (a kiosk on UTC, a rectorat overseas
// read another day): the columns say so; the instant itself is the element's `datetime`.
const date = (iso) =>
  el(
    "time",
    { datetime: iso, title: iso },
    new Date(iso).toLocaleString("fr-FR", { dateStyle: "short", timeStyle: "short", timeZone: "Europe/Paris" }),
  );
const count = (n) => n.toLocaleString("fr-FR");
const reasonText = (r) => `${REASONS[r.code] || r.code} : ${r.detail}`;
const reasonList = (reasons) => el("ul", { class: "raisons" }, reasons.map((r) => el("li", {}, reasonText(r))));

// --- Live: the SSE stream, its state always visible -------------------------------------------

let stream = null;
let streamUrl = "";
let lastId = null; // the id: of the last event this stream delivered: where a new one resumes
let retry = null; // the next attempt after a closed stream: with the view's filters of then

function setLive(state, text) {
  $("direct").dataset.etat = state;
  $("direct-texte").textContent = text;
}

// `again`: after the browser gave up a stream (refused, or its server away): the new one resumes
// after the last event received (`depuis`), or the view is read again once it opens.
function follow(filters, again = false) {
  clearTimeout(retry); // a view shown meanwhile: its own filters, not the former ones
  const params = new URLSearchParams();
  for (const name of STREAM_FILTERS) if (filters.get(name)) params.set(name, filters.get(name));
  const url = `/alertes/flux?${params}`;
  if (stream && url === streamUrl && stream.readyState !== EventSource.CLOSED) return;
  if (stream) stream.close();
  const resumeAt = again && url === streamUrl ? lastId : null;
  streamUrl = url;
  lastId = resumeAt;
  if (resumeAt !== null) params.set("depuis", resumeAt);
  setLive("connexion", "Direct : connexion…");
  stream = new EventSource(`/alertes/flux?${params}`);
  stream.onopen = () => {
    setLive("ouvert", "Direct : connecté, les changements s'affichent d'eux-mêmes");
    // A stream starts where the service's alerts are when it opens: what changed before that
    // (while a former stream was closed, or between the view's reading and this stream) is read
    // again. A stream resuming after its last event (`depuis`) is sent what it missed.
    if (resumeAt === null && current) refresh();
  };
  const opened = stream;
  stream.onerror = async () => {
    if (opened.readyState === EventSource.CLOSED) {
      setLive("ferme", "Direct : coupé, nouvel essai dans quelques secondes");
      const why = await streamRefusal(url);
      if (stream !== opened) return; // another view's stream meanwhile
      if (why) setLive("ferme", `Direct : refusé, ${why}`);
      else retry = setTimeout(() => follow(filters, true), RETRY_MS);
    } else {
      setLive("connexion", "Direct : reconnexion…");
    }
  };
  const seen = (message) => {
    if (message.lastEventId) lastId = message.lastEventId;
  };
  for (const type of Object.keys(CHANGES)) {
    stream.addEventListener(type, (message) => {
      seen(message);
      changed(type, JSON.parse(message.data).data);
    });
  }
  stream.addEventListener("fin", (message) => {
    seen(message);
    // Refused, this replica holding SSE_MAX_CLIENTS streams: the `fin` has an EventSource come back
    // by itself (a 503 would close it for good); closed here instead, said, and tried again as
    // after a 503, with the filters of the view shown by then.
    if (stream !== opened || JSON.parse(message.data).raison !== "trop-de-flux") return;
    opened.close();
    setLive("ferme", "Direct : refusé, trop de flux ouverts ; nouvel essai dans quelques secondes");
    retry = setTimeout(() => follow(filters, true), RETRY_MS);
  });
  stream.addEventListener("reprise-incomplete", () => current && refresh());
}

// Why the browser gave up a stream, which EventSource does not tell: asked again, a refusal of
// what was asked (4xx: a filter the API refuses) is its message, and the stream is not tried
// again before the view changes; null for anything else (503: too many streams open, the
// service away), which is tried again. A stream that opens this time is closed at once.
async function streamRefusal(url) {
  const asked = new AbortController();
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, signal: asked.signal });
    if (response.status < 400 || response.status >= 500 || response.status === 429) return null;
    return refusal(await response.json().catch(() => null), response.status);
  } catch {
    return null;
  } finally {
    asked.abort();
  }
}

// A burst of changes, one reading: QUIET_MS after the last, but never later than BURST_MS after
// the first (else a burst of events 100 ms apart, a national re-evaluation, left the list unread
// for as long as it lasted, the page saying it was live). Its first change is announced alone,
// the others together once the list is read again.
const QUIET_MS = 300;
const BURST_MS = 1500;
// The stream's alert events, as a change is announced (an open alert that moved comes to the
// views of where it is now and where it was: alerte-deplacee, the live stream's alone).
const CHANGES = {
  "alerte-levee": ["Alerte levée", "levée"],
  "alerte-resolue": ["Alerte résolue", "résolue"],
  "alerte-deplacee": ["Alerte déplacée", "déplacée"],
};
let pending = null;
let burst = null;
function changed(type, alert) {
  recent.add(alert.alert_id);
  if (recent.size > RECENT_MAX) recent.delete(recent.values().next().value); // the oldest: a page open for days
  if (current && current.concerns(alert)) {
    // Only what the view shows is announced: a screen reader is not read the whole country's.
    if (burst === null) {
      burst = { since: Date.now(), counts: {} };
      announce(`${CHANGES[type][0]} : ${KINDS[alert.kind]}, établissement ${alert.uai}, ressource ${alert.resource_id}`);
    } else burst.counts[type] = (burst.counts[type] || 0) + 1;
    clearTimeout(pending);
    pending = setTimeout(readAfterBurst, Math.max(0, Math.min(QUIET_MS, burst.since + BURST_MS - Date.now())));
  }
}

function readAfterBurst() {
  const counted = (n, what) => n && plural(n, what);
  const more = burst
    ? Object.keys(CHANGES)
        .map((type) => counted(burst.counts[type], CHANGES[type][1]))
        .filter(Boolean)
    : [];
  burst = null;
  if (more.length) announce(`Autres changements dans cette vue : ${more.join(", ")}.`);
  refresh();
}

// --- Alerts: filters, list, pages ---------------------------------------------------------------

const SETTLE_MS = 500; // a filter's select read once no other key changed it for this long
let settling = null;
// The list's order, said to a screen reader: the résolues by their resolution (the API's order).
const CAPTIONS = {
  "": "Alertes, la dernière levée d'abord",
  open: "Alertes ouvertes, la dernière levée d'abord",
  resolved: "Alertes résolues, la dernière résolue d'abord",
};

function fillFilters(params) {
  const academie = $("f-academie");
  const academies = options(Object.keys(territoires), params.get("code_academie"), undefined, academieName);
  academie.replaceChildren(el("option", { value: "" }, "toutes"), ...academies);
  academie.value = params.get("code_academie") || "";
  fillDepartements(params.get("code_departement") || "", true);
  for (const name of FILTERS.slice(2)) {
    const field = document.querySelector(`#filtres [name=${name}]`);
    field.value = params.has(name) ? params.get(name) : name === "state" ? "open" : "";
  }
  codeForType();
}

// A collectivité's code is typed once its type is chosen, in that type's form: "35" without a
// type was taken as a région's code and the list said no alert (audit helper-182 #9). One the
// address gives without a type stays, to be seen and cleared.
const CODE_FORMS = { commune: "ex. 35238", departement: "ex. 035", region: "ex. 53" };
function codeForType() {
  const type = $("f-responsable-type").value;
  const code = $("f-responsable-code");
  code.disabled = !type && !code.value;
  code.placeholder = CODE_FORMS[type] || "choisir le type";
}

// `named`: the address names it (kept, even out of the référentiel); else the former choice,
// dropped when the académie chosen has it not.
function fillDepartements(selected, named = false) {
  const academie = $("f-academie").value;
  const codes = academie ? territoires[academie] || [] : Object.values(territoires).flat().sort();
  const departement = $("f-departement");
  const known = Object.values(territoires).flat();
  departement.replaceChildren(el("option", { value: "" }, "tous"), ...options(codes, named ? selected : null, known));
  departement.value = named || codes.includes(selected) ? selected : "";
}

// The codes as options, and the one the address names when they have it not: shown as it
// filters the list, where a blank select said "all" of a filtered list. `known`: every code of
// the référentiel (read or not), else it is another académie's. `label`: a code's text.
function options(codes, selected, known = codes, label = (c) => c) {
  const shown = codes.map((c) => el("option", { value: c }, label(c)));
  if (selected && !codes.includes(selected)) {
    const where = known.includes(selected) ? "autre académie" : "hors référentiel";
    shown.push(el("option", { value: selected }, `${selected} (${where})`));
  }
  return shown;
}

function filtersOfForm() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("filtres"))) {
    if (value !== "" || name === "state") params.set(name, value.trim());
  }
  return params;
}

function showAlertes(params) {
  const filters = new URLSearchParams();
  for (const name of FILTERS) if (params.get(name)) filters.set(name, params.get(name));
  filters.set("state", params.has("state") ? params.get("state") : "open"); // "": every state
  const page = Math.min(Math.max(1, parseInt(params.get("page") || "1", 10) || 1), MAX_PAGE);
  fillFilters(filters);
  follow(filters);
  const view = {
    name: "alertes",
    // Its stream is filtered by the service with these filters: whatever it sends concerns the
    // list. Checked again here against the event's data, a resolution announced where the alert
    // was raised, its établissement moved since to the place this list shows, was taken for
    // another place's, and the alert stayed shown open.
    concerns: () => true,
    refresh: () => listAlertes(filters, page, () => current === view),
  };
  return view;
}

// A page after the first is read from the place in the list where the one before it ended (the
// API's `suivant`), not by its offset: read again live, an alert of an earlier page resolved
// moved every later one up, and an open alert left the page being read unseen (audit
// helper-182 #3). The place of the page shown only: the `suivant` of the one before when it was
// left by "Page suivante", else found when the page is reached (by "Page précédente", an
// address, from another view) by reading the alert just before it. Kept while the page is
// read again live, it is found anew each time the page is reached: new raises on the pages
// before it push alerts past their end, which a place kept longer left on no page.
let anchor = null; // {filters, page, place}
let pagedTo = null; // {filters, page}: a page asked for with the pages' buttons, once shown

async function pagePlace(query, key, page) {
  if (anchor !== null && anchor.filters === key && anchor.page === page) return anchor.place;
  const asked = anchor;
  const before = new URLSearchParams(query);
  before.set("limit", 1);
  before.set("offset", (page - 1) * PAGE_SIZE - 1);
  const place = (await api(`/alertes?${before}`)).suivant;
  // Kept unless another was set meanwhile ("Page suivante" pressed, another view chosen).
  if (anchor === asked) anchor = place ? { filters: key, page, place } : null;
  return place;
}

// `shown`: whether its view is still the one shown (the address is then its to change).
async function listAlertes(filters, page, shown) {
  const key = `${filters}`;
  const paged = pagedTo !== null && pagedTo.filters === key && pagedTo.page === page;
  if (paged) pagedTo = null; // the reading of the page asked for, whatever it comes to
  const query = new URLSearchParams(filters);
  if (!query.get("state")) query.delete("state");
  query.set("limit", PAGE_SIZE);
  let answer = null;
  const place = page > 1 ? await pagePlace(query, key, page) : null;
  if (place) {
    answer = await api(`/alertes?${query}&apres=${encodeURIComponent(place)}`);
    if (answer.items.length === 0) {
      anchor = null; // every alert after it gone: the page by its number again
      answer = null;
    }
  }
  const byPlace = answer !== null;
  if (!byPlace) {
    query.set("offset", (page - 1) * PAGE_SIZE);
    answer = await api(`/alertes?${query}`);
  }
  // Read from its place, the page is shown while it has alerts, the last one when none follow.
  const pages = byPlace
    ? answer.suivant
      ? Math.max(Math.ceil(answer.total / PAGE_SIZE), page + 1)
      : page
    : Math.max(1, Math.ceil(answer.total / PAGE_SIZE));
  if (page > pages) {
    // Alerts resolved (live, or since the link was made) left fewer pages: the last one instead
    // (not once another view was chosen meanwhile: its address stays).
    const params = new URLSearchParams(filters);
    params.set("page", pages);
    if (paged) pagedTo = { filters: key, page: pages }; // the focus kept on the pages' buttons there
    if (shown()) location.replace(`#/alertes?${params}`);
    return;
  }
  $("compte").textContent = answer.total === 0 ? "Aucune alerte pour ces filtres." : plural(answer.total, "alerte");
  $("alertes").querySelector("caption").textContent = CAPTIONS[query.get("state") || ""];
  $("alertes").querySelector("tbody").replaceChildren(
    ...answer.items.map((a) =>
      el(
        "tr",
        { "data-alert-id": a.alert_id, class: recent.has(a.alert_id) ? "nouvelle" : null },
        el("td", {}, date(a.raised_at), recent.has(a.alert_id) ? el("span", { class: "marque" }, "changée en direct") : []),
        el("td", {}, etabLink(a.uai, a.nom)),
        el("td", {}, resourceLink(a.resource_id, a.title)),
        el("td", {}, KINDS[a.kind] || a.kind),
        el("td", {}, reasonList(a.reasons)),
        el("td", {}, a.state === "open" ? "ouverte" : el("span", {}, "résolue le ", date(a.resolved_at))),
      ),
    ),
  );
  $("alertes").hidden = answer.total === 0;
  $("pages").hidden = false;
  $("page-position").textContent = `Page ${count(page)} sur ${count(pages)}`;
  const go = (to) => () => {
    pagedTo = { filters: key, page: to };
    if (to === page + 1 && answer.suivant) anchor = { filters: key, page: to, place: answer.suivant };
    const params = new URLSearchParams(filters);
    params.set("page", to);
    location.hash = `#/alertes?${params}`;
  };
  $("page-precedente").disabled = page <= 1;
  $("page-precedente").onclick = go(page - 1);
  $("page-suivante").disabled = !answer.suivant;
  $("page-suivante").onclick = go(page + 1);
  // The button pressed disabled at the first or last page: the focus to the other, not lost to
  // the document's start (a keyboard user then tabbed through the whole page again).
  const focused = document.activeElement; // still the button disabled, until the browser moves it
  if (paged && (focused === document.body || focused.disabled)) {
    const other = [$("page-suivante"), $("page-precedente")].find((b) => !b.disabled);
    if (other) other.focus();
  }
}

// --- One établissement --------------------------------------------------------------------------

const term = (name, value) => [el("dt", {}, name), el("dd", {}, value)];
const software = (s) => (s ? `${s.name} ${s.version}` : "non déclaré");

function showEtablissement(uai) {
  return { name: "etablissement", concerns: (a) => a.uai === uai, refresh: () => etablissement(uai) };
}

async function etablissement(uai) {
  const answer = await api(`/etablissements/${encodeURIComponent(uai)}`);
  const e = answer.etablissement;
  lastUai = e.uai;
  $("etab-simuler").href = `#/simulation?uai=${encodeURIComponent(e.uai)}`;
  $("titre-etablissement").textContent = `${e.nom} (${e.uai})`;
  $("etab-fiche").replaceChildren(
    ...term("Type", `${TYPES[e.type] || e.type}, ${e.statut === "prive" ? "privé" : e.statut}`),
    ...term("Commune", e.code_commune),
    ...term("Département", e.code_departement),
    ...term("Académie", e.code_academie),
    ...term("Ouvert", e.ouvert ? "oui" : "non"),
  );
  const equipement = answer.equipement;
  const link = equipement && equipement.connectivite;
  $("etab-connectivite").textContent = link
    ? `Connexion : ${link.bandwidth_mbps} Mbit/s ; ENT ${link.ent ? "joignable" : "injoignable"}.`
    : "Connexion : non déclarée.";
  const lots = equipement ? equipement.lots : [];
  $("etab-lots").querySelector("tbody").replaceChildren(
    ...lots.map((l) =>
      el(
        "tr",
        {},
        el("td", {}, l.lot_id),
        el("td", {}, l.kind),
        el("td", {}, l.quantity),
        el("td", {}, software(l.os)),
        el("td", {}, l.browsers.map(software).join(", ") || "aucun"),
      ),
    ),
  );
  $("etab-lots").hidden = lots.length === 0;
  training(answer.formation);
  $("etab-ressources").replaceChildren(...(answer.ressources.length ? answer.ressources.map(subscribed) : [el("p", {}, "Aucune.")]));
  if (answer.ressources.some((r) => r.reevaluation_en_attente)) readAgainWhilePending();
}

// A view a re-evaluation has not finished with, read again until it ends: one that changes no
// alert brings no live event to this view. One reading due, however many readings came meanwhile.
function readAgainWhilePending() {
  const view = current;
  clearTimeout(pendingRead);
  pendingRead = setTimeout(() => current === view && refresh(), PENDING_READ_MS);
}

function training(formation) {
  const table = $("etab-competences");
  const competences = formation && formation.competences ? Object.entries(formation.competences) : [];
  const levels = Math.max(0, ...competences.map(([, counts]) => counts.length));
  table.querySelector("thead tr").replaceChildren(
    el("th", { scope: "col" }, "Compétence"),
    ...Array.from({ length: levels }, (_, i) => el("th", { scope: "col" }, `niveau ${i + 1}`)),
  );
  table.querySelector("tbody").replaceChildren(
    ...competences.map(([code, counts]) =>
      el("tr", {}, el("th", { scope: "row" }, code), ...counts.map((n) => el("td", {}, n))),
    ),
  );
  table.hidden = competences.length === 0;
  $("etab-enseignants").textContent = formation
    ? `${plural(formation.enseignants, "enseignant")} compté${formation.enseignants > 1 ? "s" : ""}.` +
      (formation.detail_masque ? " Le détail par compétence et par outil n'est pas montré pour si peu d'enseignants." : "")
    : "Formation : rien de déclaré.";
  const tools = formation && formation.outils ? Object.entries(formation.outils) : [];
  $("etab-outils").textContent = tools.length
    ? `Formés aux outils : ${tools.map(([kind, n]) => `${kind} (${n})`).join(", ")}.`
    : "";
}

function subscribed(r) {
  const title = el("h4", {}, resourceLink(r.resource_id, r.title));
  if (!r.verdicts) {
    const why =
      r.au_catalogue === false
        ? "pas encore au catalogue : l'abonnement est arrivé avant la ressource"
        : !r.publiee
          ? "retirée du catalogue"
          : "non évaluée (abonnement terminé ou établissement fermé)";
    return el("article", { class: "ressource" }, title, el("p", {}, why));
  }
  const raised = Object.entries(r.verdicts).filter(([, v]) => v.alerte);
  const verdict = r.verdicts["equipement-incompatible"].alerte
    ? "incompatible"
    : r.verdicts["equipement-partiel"].alerte
      ? "partiel"
      : "compatible";
  const coverage = r.coverage === null || r.coverage === undefined ? "" : `, formation ${percent(r.coverage)} %`;
  // Its verdicts are as things are now; its alerts, until the re-evaluation reaches it, as before.
  const pending = r.reevaluation_en_attente
    ? el("p", { class: "attente" }, "Réévaluation en cours : ces verdicts sont ceux d'aujourd'hui, ses alertes ouvertes pas encore.")
    : null;
  return el(
    "article",
    { class: `ressource verdict-${verdict}` },
    title,
    ...(pending ? [pending] : []),
    el("p", {}, el("strong", {}, VERDICTS[verdict]), ` : ${r.compatible} poste(s) compatible(s) sur ${r.devices}${coverage}`),
    raised.length
      ? el(
          "ul",
          { class: "alertes-ressource" },
          raised.map(([kind, v]) => el("li", {}, el("strong", {}, KINDS[kind] || kind), reasonList(v.reasons))),
        )
      : el("p", {}, "Aucune alerte."),
  );
}

// --- One resource: counts as a chart (inline SVG) and as a table --------------------------------

function showRessource(id) {
  return { name: "ressource", concerns: (a) => a.resource_id === id, refresh: () => ressource(id) };
}

// A resource's id in the API's paths: its slashes kept as they are (some proxies refuse an
// encoded one), unless a segment is "." or "..", which the browser would resolve, asking for
// another id (any form of a dot, %2E too): then they are encoded as well.
function resourcePath(id) {
  const segments = id.split("/");
  if (segments.length > 1 && segments.some((s) => s === "." || s === "..")) return encodeURIComponent(id);
  if (id === "." || id === "..") throw new Error("un navigateur ne peut pas demander cet identifiant à l'API");
  return segments.map(encodeURIComponent).join("/");
}

async function ressource(id) {
  const path = resourcePath(id);
  const [summary, spread] = await Promise.all([api(`/ressources/${path}`), api(`/repartition/${path}`)]);
  $("titre-ressource").textContent = summary.title ? `${summary.title} (${id})` : id;
  const t = summary.total;
  $("res-total").textContent = summary.publiee
    ? `${t.evalues} établissement(s) abonné(s) évalué(s) : ${t.compatibles} compatible(s), ${t.partiels} partiel(s), ` +
      `${t.incompatibles} incompatible(s) ; ${t.sous_formes} sous-formé(s).`
    : "Ressource retirée du catalogue : plus évaluée.";
  if (summary.publiee && (summary.reevaluation_en_attente || spread.reevaluation_en_attente)) {
    $("res-total").textContent +=
      " Réévaluation en cours : les établissements qu'elle n'a pas encore atteints sont comptés d'après leurs alertes d'avant.";
    readAgainWhilePending();
  }
  chart($("graphe-academies"), "titre-par-academie", summary.par_academie, academieLabel);
  chart($("graphe-departements"), "titre-par-departement", spread.par_departement, departementLabel);
}

// A share as a percentage rounded down to a tenth: rounded to the nearest, 49.75 % under a 50 %
// threshold read "50 %" beside the alert it raises.
const percent = (share) => (Math.floor(share * 1000 + 1e-9) / 10).toLocaleString("fr-FR");

const academieName = (code) => (nomsAcademies[code] ? `${nomsAcademies[code]} (${code})` : code);
const academieLabel = (code) => (nomsAcademies[code] ? academieName(code) : `académie ${code}`);

function departementLabel(code) {
  const academie = Object.keys(territoires).find((a) => territoires[a].includes(code));
  return academie ? `${code} (${nomsAcademies[academie] || `ac. ${academie}`})` : code;
}

function chart(container, titleId, counts, label, empty = "Aucun établissement abonné évalué.") {
  const rows = Object.entries(counts);
  if (rows.length === 0) {
    container.replaceChildren(el("p", {}, empty));
    return;
  }
  // Room for the longest label ("Saint-Pierre-et-Miquelon (44)"), about 7.5 px a character at 13 px.
  const labelWidth = Math.max(150, 16 + Math.ceil(7.5 * Math.max(...rows.map(([code]) => label(code).length))));
  const [barWidth, rowHeight] = [460, 30];
  const most = Math.max(...rows.map(([, c]) => c.evalues));
  const scale = (n) => (n / most) * barWidth;
  const image = svg("svg", {
    viewBox: `0 0 ${labelWidth + barWidth + 110} ${rows.length * rowHeight + 4}`,
    role: "img",
    "aria-labelledby": titleId,
    class: "barres",
  });
  rows.forEach(([code, c], i) => {
    const y = i * rowHeight + 2;
    const row = svg("g", { "data-code": code });
    row.append(svg("text", { x: labelWidth - 8, y: y + 15, "text-anchor": "end" }, label(code)));
    let x = labelWidth;
    for (const [key, css] of SERIES) {
      if (c[key] > 0) {
        const width = scale(c[key]);
        row.append(svg("rect", { x, y, width, height: 18, class: css }, svg("title", {}, `${c[key]} ${key}`)));
        // Its count in it where it fits: the segments told apart by more than their colours.
        if (width >= 10 * String(c[key]).length + 8) {
          row.append(svg("text", { x: x + width / 2, y: y + 14, "text-anchor": "middle", class: "dans" }, `${c[key]}`));
        }
      }
      x += scale(c[key]);
    }
    if (c.sous_formes > 0) {
      row.append(
        svg(
          "rect",
          { x: labelWidth, y: y + 21, width: scale(c.sous_formes), height: 5, class: "sous-forme" },
          svg("title", {}, `${c.sous_formes} sous-formés`),
        ),
      );
    }
    row.append(svg("text", { x: x + 6, y: y + 15 }, `${c.evalues}`));
    image.append(row);
  });
  const table = el(
    "table",
    { class: "liste nombres" },
    el("caption", {}, "Les nombres du graphique"),
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        ["Territoire", "Évalués", "Compatibles", "Partiels", "Incompatibles", "Sous-formés"].map((h) =>
          el("th", { scope: "col" }, h),
        ),
      ),
    ),
    el(
      "tbody",
      {},
      rows.map(([code, c]) =>
        el(
          "tr",
          { "data-code": code },
          el("th", { scope: "row" }, label(code)),
          [c.evalues, c.compatibles, c.partiels, c.incompatibles, c.sous_formes].map((n) => el("td", {}, n)),
        ),
      ),
    ),
  );
  container.replaceChildren(image, el("details", {}, el("summary", {}, "Voir les nombres"), table));
}

// --- "What if": a resource before it is published, lots before they are declared ---------------
// POST /simulations/…: nothing is published nor declared.

const exampleLot = (uai) => ({
  uai,
  lot_id: "tablettes",
  kind: "tablette",
  quantity: 24,
  os: { name: "iPadOS", version: "17" },
  browsers: [],
});
let prefilledFor = null; // the UAI whose lots the equipment form shows

function showSimulation(params) {
  return { name: "simulation", concerns: () => false, refresh: () => prefillLots(params.get("uai") || lastUai) };
}

async function prefillLots(uai) {
  if (uai === prefilledFor || (!uai && $("se-lots").value)) return;
  prefilledFor = uai;
  $("se-lots").value = ""; // no other établissement's lots while this one's are fetched
  let lots = [exampleLot(uai || "0350042F")];
  if (uai) {
    const equipement = (await api(`/etablissements/${encodeURIComponent(uai)}`)).equipement;
    if (equipement && equipement.lots.length) lots = equipement.lots.map((l) => ({ uai, ...l }));
  }
  if (prefilledFor === uai) $("se-lots").value = JSON.stringify(lots, null, 2); // not overtaken by another
}

function listField(form, name, label, parse) {
  const items = form.elements[name].value.split(",").map((s) => s.trim()).filter(Boolean);
  return items.map((item) => {
    const parsed = parse(item.split(":").map((s) => s.trim()));
    if (!parsed) throw new Error(`${label} : « ${item} » n'a pas la forme attendue`);
    return parsed;
  });
}

function jsonField(form, name, label) {
  try {
    return JSON.parse(form.elements[name].value);
  } catch {
    throw new Error(`${label} : ce n'est pas du JSON valide`);
  }
}

const wholeNumber = (text) => (/^[0-9]+$/.test(text || "") ? Number(text) : null);

function ressourceOfForm(form) {
  const value = (name) => form.elements[name].value.trim();
  return {
    resource_id: value("resource_id"),
    title: value("title"),
    editor: value("editor"),
    requirements: jsonField(form, "requirements", "Exigences"),
    tools: listField(form, "tools", "Outils requis", ([kind, n]) =>
      kind && wholeNumber(n) !== null ? { kind, min_quantity: wholeNumber(n) } : null,
    ),
    min_bandwidth_mbps: value("min_bandwidth_mbps") === "" ? null : Number(value("min_bandwidth_mbps")),
    needs_ent: form.elements.needs_ent.checked,
    training: {
      competences: listField(form, "competences", "Compétences attendues", ([code, level]) =>
        code && wholeNumber(level) !== null ? { code, level: wholeNumber(level) } : null,
      ),
      tools: listField(form, "training_tools", "Outils auxquels être formé", ([kind, extra]) =>
        extra === undefined ? kind : null,
      ),
    },
  };
}

const plural = (n, word) => `${count(n)} ${word}${n > 1 ? "s" : ""}`; // "1 234 établissements"

async function simulateRessource(form) {
  const population = form.elements.population.value;
  const answer = await api(`/simulations/ressource?population=${population}`, ressourceOfForm(form));
  const t = answer.total;
  const who = population === "abonnes" ? "abonné" : "ouvert";
  const empty = `Aucun établissement ${who} évalué.`;
  chart($("sr-academies"), "titre-sr-academies", answer.par_academie, academieLabel, empty);
  chart($("sr-departements"), "titre-sr-departements", answer.par_departement, departementLabel, empty);
  $("sr-motifs").replaceChildren(
    ...answer.motifs.map((m) => el("li", {}, `${reasonText(m)} — ${plural(m.etablissements, "établissement")}`)),
  );
  const uncounted = t.formation_non_comptee
    ? ` Formation non comptée dans ${plural(t.formation_non_comptee, "établissement")} de moins de 5 enseignants.`
    : "";
  return (
    `Si elle était publiée : ${t.evalues} établissement(s) ${who}(s) évalué(s) : ${t.compatibles} compatible(s), ` +
    `${t.partiels} partiel(s), ${t.incompatibles} incompatible(s) ; ${t.sous_formes} sous-formé(s).${uncounted}`
  );
}

async function simulateEquipement(form) {
  const answer = await api("/simulations/equipement", { lots: jsonField(form, "lots", "Lots") });
  for (const [id, changes] of [
    ["se-resolues", answer.resolues],
    ["se-levees", answer.levees],
  ]) {
    $(id).querySelector("tbody").replaceChildren(
      ...changes.map((a) =>
        el(
          "tr",
          { "data-uai": a.uai },
          el("td", {}, etabLink(a.uai)),
          el("td", {}, resourceLink(a.resource_id)),
          el("td", {}, KINDS[a.kind] || a.kind),
          el("td", {}, reasonList(a.reasons)),
        ),
      ),
    );
    $(id).hidden = changes.length === 0;
  }
  return (
    `Si ces lots étaient déclarés : ${plural(answer.etablissements, "établissement")}, ` +
    `${plural(answer.paires, "abonnement")} évalué(s) ; ${plural(answer.resolues.length, "alerte")} résolue(s), ` +
    `${plural(answer.levees.length, "alerte")} levée(s).`
  );
}

async function simulate(form, prefix, run) {
  const button = form.querySelector("button[type=submit]");
  const [state, error, result] = ["etat", "erreur", "resultat"].map((part) => $(`${prefix}-${part}`));
  button.disabled = true;
  error.hidden = true;
  state.textContent = "Simulation en cours…";
  try {
    state.textContent = await run(form);
    result.hidden = false;
  } catch (e) {
    state.textContent = "";
    error.textContent = `Simulation impossible : ${e.message}`;
    error.hidden = false;
    result.hidden = true;
  } finally {
    button.disabled = false;
  }
}

// --- Navigation: the view is in the address (#/alertes?…, #/etablissement/UAI, #/ressource/ID,
// #/simulation?uai=UAI) ---------------------------------------------------------------------------

const VIEWS = ["alertes", "etablissement", "ressource", "simulation"];

async function route() {
  clearTimeout(settling); // a filter's choice left for another view, or read now by its submit
  const [path, query] = (location.hash.slice(1) || "/alertes").split("?");
  const [, name, ...rest] = path.split("/");
  let arg;
  try {
    arg = decodeURIComponent(rest.join("/"));
  } catch {
    for (const v of VIEWS) $(`vue-${v}`).hidden = true;
    current = null; // nothing shown: no live change brings the former view back
    clearTimeout(pending);
    burst = null;
    document.title = TITLE;
    showError("Adresse illisible : un caractère encodé (%) y est incomplet.");
    return;
  }
  const view =
    name === "etablissement" && arg
      ? showEtablissement(arg)
      : name === "ressource" && arg
        ? showRessource(arg)
        : name === "simulation"
          ? showSimulation(new URLSearchParams(query || ""))
          : showAlertes(new URLSearchParams(query || ""));
  const moved = current && current.name !== view.name; // not at the first load: focus stays at the top
  current = view;
  if (moved) anchor = null; // a page's place found anew when the list is reached again
  clearTimeout(pending); // a burst of the former view's changes: neither read nor announced here
  burst = null;
  for (const v of VIEWS) $(`vue-${v}`).hidden = v !== view.name;
  if (view.name !== "alertes") follow(new URLSearchParams());
  const shown = await refresh(true);
  // The view's own title once read; else the page's (its heading still the former view's).
  if (view === current) document.title = shown ? `${$(`titre-${view.name}`).textContent.trim()} — ${TITLE}` : TITLE;
  if (moved) $(`titre-${view.name}`).focus();
}

// Readings of the view one after the other: one asked while another is under way (the view
// chosen and its stream opened at once) starts when it ends, and so shows what is newer.
let reading = Promise.resolve();
// A reading asked for while one already waits behind the one under way is that one: a burst's
// readings (every 1.5 s) and the pending re-evaluation's (every 5 s) never pile up behind a
// slow answer. The first reading of a view chosen waits for its own.
let queued = null;
function refresh(first = false) {
  if (!first && queued) return queued;
  const next = reading.then(() => {
    if (queued === next) queued = null; // under way now: a later ask waits for the next one
    return read(first);
  });
  if (!first) queued = next;
  reading = next.catch(() => {}); // read() tells its errors: one never stops the next
  return next;
}

// `first`: the view was just chosen; if it cannot be read, what it shows is another's (the
// établissement or resource viewed before), so it is hidden (the alerts' list only: their
// filters stay, to be corrected). A later reading that fails leaves the view as last read, under
// the error. A reading that ends once another view is chosen changes nothing.
async function read(first) {
  const view = current;
  if (!view) return false;
  try {
    await view.refresh();
    if (view !== current) return false;
    $(`vue-${view.name}`).hidden = false;
    showError("");
    return true;
  } catch (error) {
    if (view !== current) return false;
    if (first && view.name === "alertes") {
      $("alertes").hidden = true;
      $("pages").hidden = true; // the former list's "Page 1 sur 4 001" and its buttons
      $("compte").textContent = "";
    } else if (first) {
      $(`vue-${view.name}`).hidden = true;
    }
    showError(`Lecture impossible : ${error.message}`);
    return false;
  }
}

function wire() {
  $("filtres").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(settling);
    location.hash = `#/alertes?${filtersOfForm()}`;
  });
  $("f-academie").addEventListener("change", () => fillDepartements($("f-departement").value));
  // A choice filters once it settles: arrowing through a closed select changes it at each key,
  // and each change read the list and opened a new stream (audit helper-182 #10).
  // The collectivité's type chosen, its code is typed (and the list read with Enter or
  // "Filtrer"): read at the type's change, a code half typed was refused and the list hidden.
  const typed = (select) => select.id === "f-responsable-type" && select.value;
  for (const select of $("filtres").querySelectorAll("select")) {
    select.addEventListener("change", () => {
      clearTimeout(settling);
      if (!typed(select)) settling = setTimeout(() => $("filtres").requestSubmit(), SETTLE_MS);
    });
  }
  $("f-responsable-type").addEventListener("change", () => {
    $("f-responsable-code").value = ""; // another type's code has another form
    codeForType();
  });
  $("f-responsable-code").addEventListener("input", () => clearTimeout(settling));
  $("aller-etablissement").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/etablissement/${encodeURIComponent($("uai").value.trim().toUpperCase())}`;
  });
  $("aller-ressource").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/ressource/${encodeURIComponent($("ressource").value.trim())}`;
  });
  for (const [kind, text] of Object.entries(KINDS)) $("f-kind").append(el("option", { value: kind }, text));
  for (const [id, prefix, run] of [
    ["sim-ressource", "sr", simulateRessource],
    ["sim-equipement", "se", simulateEquipement],
  ]) {
    $(id).addEventListener("submit", (event) => {
      event.preventDefault();
      simulate(event.target, prefix, run);
    });
  }
  for (const view of VIEWS) $(`titre-${view}`).tabIndex = -1;
  window.addEventListener("hashchange", route);
}

async function start() {
  wire();
  try {
    ({ academies: territoires, noms: nomsAcademies } = await api("/territoires"));
  } catch (error) {
    showError(`Lecture impossible : ${error.message}`);
  }
  await route();
}

document.addEventListener("DOMContentLoaded", start);

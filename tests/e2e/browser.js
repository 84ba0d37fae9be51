// Drive the real mixpanel-browser library in Debian's headless Chromium through the proxy;
// used by tests/e2e/test_browser.py. Never downloads a browser: playwright-core starts the
// Chromium at cfg.chromium (executablePath) with a fresh user-data-dir.
//
// Usage: node tests/e2e/browser.js '<json config>'
//   {"chromium": "/usr/bin/chromium", "page": "http://127.0.0.1:P/", "proxy": "http://127.0.0.1:Q",
//    "scenario": "full" | "cors", "user_data_dir": "...", "timeout_ms": 30000, "ids": {...}}
// Prints one JSON line: {"requests": [...], "results": {...}, "console": [...], "error": null | "..."}.
// Every request the page made to the proxy is reported with its exact body (base64), so the
// Python side can check what arrived against what the library really sent.
"use strict";

const crypto = require("crypto");
const { chromium } = require("playwright-core");

const cfg = JSON.parse(process.argv[2]);
const TIMEOUT = cfg.timeout_ms || 30000;
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const requests = [];
const byRequest = new Map();
const consoleLines = [];
const results = {};

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(check, what, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(100);
  }
}

// Only to know when to move on: the Python side decodes independently to check.
function records(entry) {
  if (!entry.body) return [];
  const text = Buffer.from(entry.body, "base64").toString("utf8");
  const match = /(?:^|&)data=([^&]*)/.exec(text);
  if (!match) return [];
  const value = decodeURIComponent(match[1]);
  const json = /^\s*[[{]/.test(value) ? value : Buffer.from(value, "base64").toString("utf8");
  const parsed = JSON.parse(json);
  return Array.isArray(parsed) ? parsed : [parsed];
}

function endpoint(entry) {
  return new URL(entry.url).pathname.replace(/^\/+|\/+$/g, "").split("/")[0];
}

// Records the proxy answered with 200, per endpoint.
function delivered(name, beaconsToo = false) {
  return requests
    .filter((e) => endpoint(e) === name && e.method === "POST" && (e.status === 200 || (beaconsToo && e.type === "ping")))
    .flatMap(records);
}

function eventNames() {
  return delivered("track").map((r) => r.event);
}

function count(list, value) {
  return list.filter((v) => v === value).length;
}

// Chromium does not report to DevTools the beacons an unloading page sends, so the page
// notes each navigator.sendBeacon call (URL and body, which the library passes as a string)
// in sessionStorage, where the next page of the same origin reads it back.
const NOTE_BEACONS = () => {
  const send = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, data) {
    try {
      const log = JSON.parse(sessionStorage.getItem("__beacons") || "[]");
      log.push({ url: new URL(String(url), location.href).href, body: typeof data === "string" ? data : null });
      sessionStorage.setItem("__beacons", JSON.stringify(log));
    } catch (err) {
      /* a note that cannot be kept shows up as a missing beacon */
    }
    return send(url, data);
  };
};

// Bodies DevTools knows only on request (a fetch of a Blob: the recorder's gzip batches).
const cdpBodies = new Map();

async function watchBodies(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.requestWillBeSent", (event) => {
    if (!event.request.hasPostData || event.request.postData !== undefined) return;
    if (!event.request.url.startsWith(cfg.proxy)) return;
    const pending = cdp
      .send("Network.getRequestPostData", { requestId: event.requestId })
      .then((got) => Buffer.from(got.postData, got.base64Encoded ? "base64" : "utf8").toString("base64"))
      .catch((err) => `error: ${err.message}`);
    cdpBodies.set(event.request.url, pending);
  });
}

async function fillBodies() {
  for (const entry of requests) {
    if (entry.method === "POST" && !entry.body && cdpBodies.has(entry.url)) {
      const body = await cdpBodies.get(entry.url);
      if (body.startsWith("error: ")) entry.failure = entry.failure || `body unavailable (${body})`;
      else entry.body = body;
    }
  }
}

function watch(context) {
  context.on("request", (req) => {
    if (!req.url().startsWith(cfg.proxy)) return;
    const body = req.postDataBuffer();
    const entry = {
      url: req.url(),
      method: req.method(),
      type: req.resourceType(),
      headers: req.headers(),
      body: body ? body.toString("base64") : "",
      status: null,
      failure: null,
      response_headers: null,
      sha256: null,
    };
    byRequest.set(req, entry);
    requests.push(entry);
  });
  context.on("requestfinished", async (req) => {
    const entry = byRequest.get(req);
    if (!entry) return;
    try {
      entry.headers = await req.allHeaders();
      const response = await req.response();
      if (response) {
        entry.response_headers = await response.allHeaders();
        if (entry.method === "GET" && entry.url.endsWith(".js")) {
          entry.sha256 = crypto.createHash("sha256").update(await response.body()).digest("hex");
        }
        entry.status = response.status();
      } else {
        entry.status = 0;
      }
    } catch (err) {
      entry.failure = entry.failure || `response unavailable: ${err.message}`;
      entry.status = entry.status === null ? 0 : entry.status;
    }
  });
  context.on("requestfailed", (req) => {
    const entry = byRequest.get(req);
    if (!entry) return;
    entry.failure = (req.failure() || {}).errorText || "failed";
  });
}

async function load(page) {
  page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
  await page.goto(cfg.page, { waitUntil: "load", timeout: TIMEOUT });
  await page.waitForFunction(() => window.__mp_loaded === true, null, { timeout: TIMEOUT });
}

async function full(context, page) {
  const ids = cfg.ids;
  await load(page);
  // The recorder module comes through the proxy (lib_base_path) and starts recording.
  await page.waitForFunction(
    () => Boolean((window.mixpanel.get_session_recording_properties() || {}).$mp_replay_id),
    null,
    { timeout: TIMEOUT },
  );
  // Something for the replay to show.
  await page.click("#buy");
  await page.fill("#query", "red shoes");

  results.immediate = await page.evaluate(
    ({ ids }) =>
      new Promise((resolve) => {
        const mp = window.mixpanel;
        mp.identify(ids.user);
        mp.people.set({ $name: "Ada Lovelace", plan: "pro", "tricky \"key\"": "naïve café 🎉 $x" });
        mp.people.set_once({ first_seen: "2024-01-01T00:00:00", source: "e2e" });
        mp.people.increment("logins", 2);
        mp.people.append("pages", "/pricing");
        mp.people.union("tags", ["a", "b"]);
        mp.people.unset("obsolete");
        mp.get_group("company", ids.group).set({ seats: 12, name: "Acme & Co" });
        for (let n = 0; n < 3; n++) {
          mp.track("e2e batched", { n, nested: { a: [1, 2, { b: null }] }, text: "line1\nline2 \"q\" \\ ünï 🎉" });
        }
        mp.track("e2e immediate", { kind: "immediate", amount: 9007199254740991 }, { send_immediately: true }, resolve);
      }),
    { ids },
  );

  // alias() tracks $create_alias, then (once that is sent) calls identify(alias), which
  // registers the alias as $user_id and tracks another $identify.
  await page.evaluate(({ ids }) => window.mixpanel.alias(ids.alias), { ids });
  await waitFor(
    () => page.evaluate(() => window.mixpanel.get_property("$user_id")).then((id) => id === cfg.ids.alias),
    "alias, then identify(alias)",
  );
  await page.evaluate(() => window.mixpanel.people.delete_user());

  const ops = ["$set", "$set_once", "$add", "$append", "$union", "$unset", "$delete"];
  await waitFor(() => {
    const names = eventNames();
    const engaged = delivered("engage");
    return (
      count(names, "e2e batched") === 3 &&
      count(names, "e2e immediate") === 1 &&
      count(names, "$create_alias") === 1 &&
      count(names, "$identify") >= 2 &&
      ops.every((op) => engaged.some((r) => op in r)) &&
      delivered("groups").length >= 1
    );
  }, "tracked events, profile and group updates delivered");

  // Session replay: stopping flushes the recorder's batch to /record.
  await page.evaluate(() => window.mixpanel.stop_session_recording());
  await waitFor(
    () => requests.some((e) => endpoint(e) === "record" && e.status === 200),
    "a /record batch delivered",
  );
  await waitFor(() => requests.every((e) => e.status !== null || e.failure !== null), "requests settled");

  // sendBeacon on page hide: queue events, then leave the page before the batch timer fires.
  await page.evaluate(() => {
    for (let n = 0; n < 2; n++) window.mixpanel.track("e2e beacon", { n, left: true });
  });
  // Queueing is asynchronous (localStorage under a lock): leave once both are queued, as a
  // person would a moment later.
  await waitFor(
    () =>
      page.evaluate(() => {
        const key = "__mpq_" + window.mixpanel.get_config("token") + "_ev";
        const queued = JSON.parse(localStorage.getItem(key) || "[]");
        return queued.filter((item) => item.payload && item.payload.event === "e2e beacon").length === 2;
      }),
    "both beacon events queued",
  );
  await page.goto(new URL("bye", cfg.page).href, { waitUntil: "load", timeout: TIMEOUT });
  const beacons = await page.evaluate(() => JSON.parse(sessionStorage.getItem("__beacons") || "[]"));
  for (const beacon of beacons.filter((b) => b.url.startsWith(cfg.proxy))) {
    requests.push({
      url: beacon.url,
      method: "POST",
      type: "ping",
      headers: { "content-type": "text/plain;charset=UTF-8" },
      body: beacon.body === null ? "" : Buffer.from(beacon.body, "utf8").toString("base64"),
      status: null, // a beacon's answer is never seen: the Python side checks what arrived
      failure: beacon.body === null ? "beacon body was not a string" : null,
      response_headers: null,
      sha256: null,
    });
  }
  if (!beacons.length) throw new Error("the library sent no beacon when the page was hidden");
}

async function cors(context, page) {
  await load(page);
  results.immediate = await page.evaluate(
    () =>
      new Promise((resolve) => {
        window.mixpanel.track("e2e cors", { kind: "refused" }, { send_immediately: true }, resolve);
      }),
  );
  // A request the browser must preflight (it carries Authorization, as /record does).
  results.preflighted = await page.evaluate(
    (proxy) =>
      fetch(proxy + "/record/?format=body", {
        method: "POST",
        headers: { Authorization: "Basic " + btoa("t:"), "Content-Type": "application/octet-stream" },
        body: "[]",
      }).then(
        (r) => `status ${r.status}`,
        (err) => `error ${err.name}: ${err.message}`,
      ),
    cfg.proxy,
  );
  await waitFor(() => requests.every((e) => e.status !== null || e.failure !== null), "requests settled", 10000);
}

async function main() {
  const context = await chromium.launchPersistentContext(cfg.user_data_dir, {
    executablePath: cfg.chromium,
    headless: true,
    args: ARGS,
  });
  let error = null;
  try {
    watch(context);
    await context.addInitScript(NOTE_BEACONS);
    const page = await context.newPage();
    await watchBodies(context, page);
    await (cfg.scenario === "cors" ? cors : full)(context, page);
  } catch (err) {
    error = String((err && err.stack) || err);
  } finally {
    await fillBodies().catch(() => null);
    await context.close().catch(() => null);
  }
  process.stdout.write(JSON.stringify({ requests, results, console: consoleLines, error }) + "\n");
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ requests, results, console: consoleLines, error: String(err) }) + "\n");
  process.exit(1);
});

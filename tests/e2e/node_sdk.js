// Drive the real Node SDK (npm `mixpanel`) through the proxy, every call it has, single and
// batch; used by tests/e2e/test_node_sdk.py. Every HTTP request the SDK makes is noted at
// the transport (https.request), with the exact bytes it wrote, and the step that made it.
//
// Usage: node tests/e2e/node_sdk.js '{"host":"127.0.0.1","port":8443,"token":"t","secret":"s","unique":"u"}'
// Prints one JSON line {"errors": [...], "requests": [...]}; exits 1 if any call failed.
"use strict";

const https = require("https");

const cfg = JSON.parse(process.argv[2]);
const requests = [];
let step = "";

// Note each request as written: method, path, headers, body bytes, and the answer's status.
const request = https.request;
https.request = function (options, callback) {
  const entry = {
    step,
    method: options.method,
    url: `https://${options.host}:${options.port}${options.path}`,
    headers: Object.fromEntries(Object.entries(options.headers || {}).map(([k, v]) => [k.toLowerCase(), String(v)])),
    body: "",
    status: null,
  };
  requests.push(entry);
  const req = request.call(this, options, (res) => {
    entry.status = res.statusCode;
    if (callback) callback(res);
  });
  const chunks = [];
  const write = req.write;
  req.write = function (chunk, ...rest) {
    chunks.push(Buffer.from(chunk));
    return write.call(this, chunk, ...rest);
  };
  const end = req.end;
  req.end = function (chunk, ...rest) {
    if (chunk && typeof chunk !== "function") chunks.push(Buffer.from(chunk));
    entry.body = Buffer.concat(chunks).toString("base64");
    return end.call(this, chunk, ...rest);
  };
  return req;
};

const Mixpanel = require("mixpanel");

const mp = Mixpanel.init(cfg.token, {
  host: cfg.host,
  port: cfg.port,
  protocol: "https",
  secret: cfg.secret, // /import needs it, and the SDK sends it over HTTPS only
  keepAlive: false,
});

const u = cfg.unique;
const user = `node-${u}`;
const group = `acme-${u}`;
const T = 1767225600; // 2026-01-01T00:00:00Z
const tricky = { text: 'line1\nline2 "q" \\ ünï 🎉', nested: { a: [1, 2, { b: null }] }, "$x": "$browser ?&=+" };

function batch(event, n, extra) {
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push({ event, properties: { distinct_id: `${user}-${i}`, time: T + i, i, ...extra } });
  }
  return out;
}

const steps = [
  ["track", (cb) => mp.track("node track", { distinct_id: user, time: T, ...tricky }, cb)],
  ["track (no time)", (cb) => mp.track("node track", { distinct_id: user, untimed: true }, cb)],
  ["track_batch", (cb) => mp.track_batch(batch("node batch", 60, { note: "~~~???" }), (errs) => cb(errs && errs.length ? errs[0] : null))],
  ["import", (cb) => mp.import("node import", T - 86400 * 30, { distinct_id: user, $insert_id: `imp-${u}` }, cb)],
  [
    "import_batch",
    (cb) => mp.import_batch(batch("node import batch", 60, { imported: true }), (errs) => cb(errs && errs.length ? errs[0] : null)),
  ],
  ["alias", (cb) => mp.alias(user, `alias-${u}`, cb)],
  ["people.set", (cb) => mp.people.set(user, { $name: "Ada Lovelace", plan: "pro", ...tricky }, cb)],
  ["people.set_once", (cb) => mp.people.set_once(user, { first_seen: "2026-01-01T00:00:00" }, cb)],
  ["people.increment", (cb) => mp.people.increment(user, "logins", 2, cb)],
  ["people.append", (cb) => mp.people.append(user, "pages", "/pricing", cb)],
  ["people.union", (cb) => mp.people.union(user, { tags: ["a", "b"] }, cb)],
  ["people.remove", (cb) => mp.people.remove(user, { tags: "a" }, cb)],
  ["people.unset", (cb) => mp.people.unset(user, ["obsolete", "older"], cb)],
  ["people.delete_user", (cb) => mp.people.delete_user(user, cb)],
  ["groups.set", (cb) => mp.groups.set("company", group, { seats: 12, name: "Acme & Co" }, cb)],
  ["groups.set_once", (cb) => mp.groups.set_once("company", group, { founded: 1999 }, cb)],
  ["groups.union", (cb) => mp.groups.union("company", group, { domains: ["acme.example"] }, cb)],
  ["groups.remove", (cb) => mp.groups.remove("company", group, { domains: "old.example" }, cb)],
  ["groups.unset", (cb) => mp.groups.unset("company", group, "obsolete", cb)],
  ["groups.delete_group", (cb) => mp.groups.delete_group("company", group, cb)],
];

const errors = [];
function next(index) {
  if (index === steps.length) {
    process.stdout.write(JSON.stringify({ errors, requests }) + "\n");
    process.exit(errors.length ? 1 : 0);
  }
  const [name, run] = steps[index];
  step = name;
  run((err) => {
    if (err) errors.push(`${name}: ${err.message || err}`);
    next(index + 1);
  });
}
next(0);

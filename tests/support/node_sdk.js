// Drive the real Node SDK (npm `mixpanel`) against the proxy; used by tests/test_sdk_node.py.
// Usage: node tests/support/node_sdk.js '{"host":"127.0.0.1","port":8080,"protocol":"https","token":"t","secret":"s"}'
// Prints one JSON line {"errors": [...]} and exits 1 if any call reported an error.
"use strict";

const Mixpanel = require("mixpanel");

const cfg = JSON.parse(process.argv[2]);
const mp = Mixpanel.init(cfg.token, {
  host: cfg.host,
  port: cfg.port,
  protocol: cfg.protocol,
  secret: cfg.secret,
  verbose: Boolean(cfg.verbose),
  keepAlive: false,
});

const batch = [];
for (let i = 0; i < cfg.batch_size; i++) {
  batch.push({ event: "node batch", properties: { distinct_id: `n-${i}`, time: 1700000000 + i, note: "~~~???", i } });
}

const steps = [
  ["track", (cb) => mp.track("node track", { distinct_id: "n-1", plan: "?>?>~~ ÿ", time: 1700000000 }, cb)],
  ["track_batch", (cb) => mp.track_batch(batch, (errors) => cb(errors && errors.length ? errors[0] : null))],
  ["people.set", (cb) => mp.people.set("n-1", { $name: "Ada", tier: 2 }, cb)],
  ["groups.set", (cb) => mp.groups.set("company", "acme", { seats: 12 }, cb)],
  ["import", (cb) => mp.import("node import", 1600000000, { distinct_id: "n-1", $insert_id: "node-imp-1" }, cb)],
];

const errors = [];
function next(index) {
  if (index === steps.length) {
    console.log(JSON.stringify({ errors }));
    process.exit(errors.length ? 1 : 0);
  }
  const [name, step] = steps[index];
  step((err) => {
    if (err) errors.push(`${name}: ${err.message || err}`);
    next(index + 1);
  });
}
next(0);

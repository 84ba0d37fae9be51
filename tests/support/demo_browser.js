// Drive the proxy's /demo page in headless Chromium (Debian's, through playwright-core):
// click each button as a user would, wait for each reply the page shows, print them as JSON.
// Usage: node demo_browser.js <demo page URL> <chromium path>
"use strict";

const { chromium } = require("playwright-core");

const [url, executablePath] = process.argv.slice(2);
const CLICKS = [
  // button, replies it adds: identify sends $identify (/track) and, the first time, $set_once of the
  // initial referrer (/engage), in either order; group set also sets the user's group key (/engage).
  // Each click waits for all of its replies, so none arrives after its click's replies were read.
  ["#track", 1],
  ["#identify", 2],
  ["#people-set", 1],
  ["#people-increment", 1],
  ["#group-set", 2],
];

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    const requested = [];
    page.on("request", (request) => requested.push(new URL(request.url()).pathname));
    await page.goto(url, { waitUntil: "load", timeout: 20000 });
    await page.waitForFunction(() => window.demoReady === true, null, { timeout: 20000 });
    const clicks = [];
    for (const [button, adds] of CLICKS) {
      const before = await page.evaluate(() => window.demoReplies.length);
      await page.click(button);
      await page.waitForFunction((n) => window.demoReplies.length >= n, before + adds, { timeout: 20000 });
      clicks.push({ button, replies: await page.evaluate((n) => window.demoReplies.slice(n), before) });
    }
    const shown = await page.$$eval("#log li .call", (items) => items.map((item) => item.textContent));
    const status = await page.textContent("#status");
    console.log(JSON.stringify({ status, clicks, shown, requested, errors }));
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});

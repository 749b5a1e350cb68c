// The browser test of /demo: two users, each in a browser context of their
// own, chat in Chromium through the page as a person would.
//
//   node tests/browser/demo.mjs <base url> <screenshot.png>
//
// tests/integration/demo.rs runs it against a Tidings of its own;
// `scripts/stack up` installs Chromium and playwright-core. Exits 0 when every
// step held, 1 with the failing step (and what the page showed) otherwise.
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error("usage: node demo.mjs <base url> <screenshot path>");
  process.exit(2);
}

/** How long each step may take. */
const STEP_MS = 15_000;
const suffix = Math.random().toString(36).slice(2, 8);
const alice = `a_${suffix}`, bob = `b_${suffix}`;
const PASSWORD = "correct horse battery";
const started = Date.now();
let step = "starting Chromium";
const pages = {};
const problems = []; // uncaught exceptions and console errors of either page

function log(text) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${text}`);
}

async function run(name, fn) {
  step = name;
  log(name);
  await fn();
}

/** Waits until the element's text contains `text` (or, with `absent`, no longer does). */
async function waitText(who, selector, text, absent = false) {
  const page = pages[who];
  try {
    await page.waitForFunction(
      ([selector, text, absent]) => {
        const element = document.querySelector(selector);
        return element && element.textContent.includes(text) !== absent;
      },
      [selector, text, absent],
      { timeout: STEP_MS, polling: 100 },
    );
  } catch (error) {
    const now = await page.locator(selector).textContent({ timeout: 1000 }).catch(() => "(no such element)");
    throw new Error(
      `${who}'s ${selector} ${absent ? "still contains" : "does not contain"} ${JSON.stringify(text)} ` +
        `within ${STEP_MS / 1000} s; it says ${JSON.stringify(now)}`,
    );
  }
}

async function open(browser, who) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (error) => problems.push(`${who}: uncaught ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`${who}: console error: ${message.text()}`);
  });
  pages[who] = page;
  const response = await page.goto(`${base}/demo`);
  if (!response || response.status() !== 200) throw new Error(`GET /demo answered ${response && response.status()}`);
  return page;
}

async function signUp(who, username) {
  const page = pages[who];
  await page.fill("#username", username);
  await page.fill("#email", `${username}@example.com`);
  await page.fill("#password", PASSWORD);
  await page.click("#signup");
  await waitText(who, "#me", username);
  await waitText(who, "#ws-status", "live");
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  // Chromium's sandbox does not run as root (CI containers).
  args: process.getuid && process.getuid() === 0 ? ["--no-sandbox"] : [],
});
let failed = false;
try {
  await run("A opens /demo and signs up", async () => {
    await open(browser, "A");
    await signUp("A", alice);
  });

  const roomName = `demo ${suffix}`;
  let roomId;
  await run("A creates a public room", async () => {
    await pages.A.fill("#room-name", roomName);
    await pages.A.click("#create-room");
    await waitText("A", "#room-title", roomName);
    roomId = (await pages.A.textContent("#room-id")).trim();
    if (!/^[0-9a-f-]{36}$/.test(roomId)) throw new Error(`#room-id shows ${JSON.stringify(roomId)}, not a room id`);
    await waitText("A", "#public-rooms", roomName);
  });

  await run("B opens /demo, signs up and joins the room by its id", async () => {
    await open(browser, "B");
    await signUp("B", bob);
    await pages.B.fill("#join-id", roomId);
    await pages.B.click("#join-room");
    await waitText("B", "#room-id", roomId);
    await waitText("B", "#room-title", "2 in it");
    await pages.B.locator("#message-text").waitFor({ state: "visible" });
  });

  await run("each sees the other online", async () => {
    await waitText("B", "#online", alice);
    await waitText("A", "#online", bob);
    await waitText("A", "#room-title", "2 in it");
  });

  const hello = `hello from A (${suffix})`;
  await run("A types; B sees that A is typing", async () => {
    // Typed slowly, so that A is still typing while B looks.
    await Promise.all([
      pages.A.locator("#message-text").pressSequentially(hello, { delay: 80 }),
      waitText("B", "#typing", `${alice} is typing`),
    ]);
  });

  await run("A sends; B sees the message, and A no longer typing", async () => {
    await pages.A.click("#send");
    await waitText("B", "#messages", hello);
    await waitText("B", "#typing", alice, true);
    await waitText("A", "#messages", hello);
  });

  const reply = `hi from B (${suffix})`;
  await run("B replies; A sees it", async () => {
    await pages.B.fill("#message-text", reply);
    await pages.B.press("#message-text", "Enter");
    await waitText("A", "#messages", reply);
    await waitText("B", "#messages", reply);
  });

  const missed = `while B was away (${suffix})`;
  await run("B's socket drops; B resumes with since and gets what A sent meanwhile", async () => {
    await pages.B.evaluate(() => state.ws.close());
    await pages.A.fill("#message-text", missed);
    await pages.A.click("#send");
    await waitText("B", "#ws-status", "live");
    await waitText("B", "#messages", missed);
    await waitText("B", "#events", `"type":"subscribed","channel":"room:${roomId}"`);
    const recovered = await pages.B.evaluate(
      (channel) =>
        [...document.querySelectorAll("#events li:not(.sent)")]
          .map((li) => JSON.parse(li.textContent))
          .some((f) => f.type === "subscribed" && f.channel === channel && f.recovered === true),
      `room:${roomId}`,
    );
    if (!recovered) throw new Error("B resubscribed to the room without recovering (no subscribed frame with recovered: true)");
  });

  await run("the events panels show the frames, newest first", async () => {
    const first = await pages.B.locator("#events li:not(.sent)").first().textContent();
    JSON.parse(first);
    await waitText("B", "#events", '"event":"message.created"');
    await waitText("A", "#events", '"type":"presence"');
  });

  await run("no page error", async () => {
    if (problems.length) throw new Error(problems.join("\n"));
  });
} catch (error) {
  failed = true;
  console.error(`FAILED at step "${step}": ${error.message}`);
  for (const problem of problems) console.error(`  ${problem}`);
  for (const [who, page] of Object.entries(pages)) {
    const shown = await page.locator("#error").textContent({ timeout: 1000 }).catch(() => "");
    if (shown) console.error(`  ${who}'s page shows the error: ${shown}`);
    const frames = await page
      .locator("#events li")
      .evaluateAll((items) => items.slice(0, 15).map((li) => li.textContent))
      .catch(() => []);
    console.error(`  ${who}'s newest frames:\n    ${frames.join("\n    ")}`);
  }
} finally {
  // B's page, also after a failure: it shows how far the test came.
  const page = pages.B || pages.A;
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch((e) => console.error(`no screenshot: ${e.message}`));
  await browser.close();
}
log(failed ? "failed" : "passed");
process.exit(failed ? 1 : 0);

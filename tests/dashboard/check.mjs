// Opens the dashboard of a running `truce serve` in Debian's Chromium (headless,
// driven by playwright-core) while a conflict workload runs, and checks that:
// the page loads without console errors, the charts have data, the hot
// document and its remedy appear in the table, and each source named in
// EXPECT_SOURCES (comma-separated legend labels, such as "(no source)") has
// a conflict rate above zero. Keeps a screenshot.
//
// usage: node check.mjs BASE_URL SCREENSHOT.png EXPECT_DOCUMENT EXPECT_REMEDY [EXPECT_SOURCES]
import { chromium } from "playwright-core";

const [base, screenshot, document, remedy, expectSources = ""] = process.argv.slice(2);
if (!base || !screenshot || !document || !remedy) {
  console.error("usage: node check.mjs BASE_URL SCREENSHOT.png EXPECT_DOCUMENT EXPECT_REMEDY [EXPECT_SOURCES]");
  process.exit(2);
}
const sources = expectSources.split(",").filter(s => s !== "");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const deadline = Date.now() + 60_000;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // This machine has no network beyond loopback: keep Chromium from trying.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", message => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  page.on("pageerror", error => problems.push(`page error: ${error.message}`));
  page.on("requestfailed", request => problems.push(`request failed: ${request.url()}`));
  const response = await page.goto(`${base}/dashboard`, { waitUntil: "load" });
  if (!response || response.status() !== 200) throw new Error(`GET /dashboard answered ${response && response.status()}`);

  // Live: the status turns live, the table lists the hot document with its
  // remedy, and the charts show non-zero commit and conflict rates.
  const check = async () => page.evaluate(([document, remedy, sources]) => {
    const text = id => window.document.getElementById(id).textContent;
    const rows = [...window.document.querySelectorAll("#hot tr")].map(r => r.textContent);
    // The series of a chart's legend ("name: value") by name, with their values now.
    const legend = id => new Map([...window.document.querySelectorAll(`#${id} span`)].map(span => {
      const at = span.textContent.lastIndexOf(": ");
      return [span.textContent.slice(0, at), parseFloat(span.textContent.slice(at + 2))];
    }));
    const nonZero = id => [...legend(id).values()].some(v => v > 0);
    const conflicting = legend("l-conflicts");
    return {
      live: text("status").startsWith("live"),
      row: rows.some(r => r.includes(document) && r.includes(remedy)),
      commits: nonZero("l-commits"),
      conflicts: nonZero("l-conflicts") && sources.every(s => conflicting.get(s) > 0),
      tiles: text("t-commits") !== "–",
      status: text("status"),
      legend: text("l-commits") + " | " + text("l-conflicts"),
      rows,
    };
  }, [document, remedy, sources]);
  let state;
  for (;;) {
    state = await check();
    if (state.live && state.row && state.commits && state.conflicts && state.tiles) break;
    if (Date.now() > deadline) throw new Error(`the dashboard did not show the workload: ${JSON.stringify(state)}`);
    await page.waitForTimeout(250);
  }
  // Let the charts gather a few more points before the picture.
  await page.waitForTimeout(3000);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`dashboard ok: ${state.legend}; screenshot ${screenshot}`);
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}

// A page of another origin calls a running `truce serve` from Debian's
// Chromium (headless, driven by playwright-core), as an RxDB app or a
// heartbeat tab would: the browser's own CORS checks decide what the page's
// script may send and read.
//
// The page is served at PAGE_ORIGIN by a server of this script's own on
// loopback (another origin than Truce's; both in the same address space, as
// an app and its database on the public internet are, so Chromium's
// local-network rules do not apply); its script writes with the API's headers (a JSON body,
// Idempotency-Key, If-Match: each needs a preflight), reads ETag, and follows
// the SSE change feed with EventSource. Against BLOCKED_BASE (a server that
// does not allow PAGE_ORIGIN) the same fetch must fail, and a write sent
// without reading its answer (no-cors, text/plain: no preflight) must not
// apply.
//
// usage: node cors.mjs ALLOWED_BASE BLOCKED_BASE PAGE_ORIGIN
import { createServer } from "node:http";
import { chromium } from "playwright-core";

const [allowed, blocked, origin] = process.argv.slice(2);
if (!allowed || !blocked || !origin) {
  console.error("usage: node cors.mjs ALLOWED_BASE BLOCKED_BASE PAGE_ORIGIN");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const pages = createServer((request, response) => {
  response.writeHead(200, { "content-type": "text/html" });
  response.end("<!doctype html><title>app</title>");
});
await new Promise(resolve => pages.listen(Number(new URL(origin).port), "127.0.0.1", resolve));

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${origin}/`);
  const result = await page.evaluate(async ([allowed, blocked]) => {
    const url = `${allowed}/v1/c/browser/tab1`;
    const json = { "content-type": "application/json" };
    const put = await fetch(url, {
      method: "PUT", headers: { ...json, "idempotency-key": "tab1-create" },
      body: JSON.stringify({ path: "/home" }),
    });
    const got = await fetch(url);
    const etag = got.headers.get("etag");
    const patch = await fetch(url, {
      method: "PATCH", headers: { ...json, "if-match": etag, "truce-source": "heartbeat" },
      body: JSON.stringify({ $set: { path: "/cart" } }),
    });
    const stale = await fetch(url, {
      method: "PATCH", headers: { ...json, "if-match": etag },
      body: JSON.stringify({ $set: { path: "/old" } }),
    });
    const feed = await new Promise((resolve, reject) => {
      const source = new EventSource(`${allowed}/v1/c/browser/_changes?feed=sse&since=0`);
      const timer = setTimeout(() => { source.close(); reject(new Error("no SSE event in 10 s")); }, 10_000);
      source.onmessage = event => { clearTimeout(timer); source.close(); resolve(JSON.parse(event.data)); };
    });
    let refused = null;
    try {
      await fetch(`${blocked}/v1/c/browser/tab1`, { method: "PUT", headers: json, body: "{}" });
      refused = "the fetch went through";
    } catch (error) {
      refused = error.name;
    }
    // What CORS does not stop: a write the page sends without reading the
    // answer (no preflight for a text/plain POST). The server must refuse it.
    await fetch(`${blocked}/v1/tx`, {
      method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" },
      body: JSON.stringify({ ops: [{ op: "put", c: "browser", id: "forged", doc: {} }] }),
    });
    return {
      put: put.status, get: got.status, etag, patch: patch.status, stale: stale.status,
      staleBody: await stale.json(), feed, refused,
    };
  }, [allowed, blocked]);
  const problems = [];
  const expect = (ok, what) => { if (!ok) problems.push(what); };
  expect(result.put === 201, `PUT answered ${result.put}`);
  expect(result.get === 200 && /^(W\/)?"1-/.test(result.etag || ""), `GET ${result.get}, ETag ${result.etag}`);
  expect(result.patch === 200, `PATCH with If-Match answered ${result.patch}`);
  expect(result.stale === 409 && result.staleBody.error === "conflict", `a stale If-Match answered ${result.stale}`);
  expect(result.feed && result.feed.id === "tab1", `SSE event ${JSON.stringify(result.feed)}`);
  expect(result.refused === "TypeError", `the server without CORS for this origin: ${result.refused}`);
  // Asked from here, with no Origin: the forged write must not be there.
  const forged = await fetch(`${blocked}/v1/c/browser/forged`);
  expect(forged.status === 404, `a no-cors text/plain POST from another origin wrote (${forged.status})`);
  if (problems.length) {
    console.error(problems.join("\n"), "\n", JSON.stringify(result));
    process.exit(1);
  }
  console.log(`cors ok: ${JSON.stringify(result)}`);
} finally {
  await browser.close();
  pages.close();
}

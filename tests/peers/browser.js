// Headless Chromium (Debian's package) driven by playwright-core, for tests/browser.rs.
//
//   node browser.js --page http://PROXY/ --screenshot OUT.png [--deflate-ws ws://PROXY2/] [--chromium PATH]
//                   [--home DIR] [--resolve HOST] [--untrusted URL]
//
// For https: --home DIR runs Chromium with HOME=DIR, so it reads the NSS database in
// DIR/.pki/nssdb (where the test put its CA); --resolve HOST maps HOST to 127.0.0.1
// (--host-resolver-rules), so the page is loaded by name (SNI, certificate name check);
// --untrusted URL must then fail to load, in a second tab, with a certificate error (a server whose CA is not in
// that database: the check that trust came from the database, not from a disabled check).
//
// 1. Loads the echo page through the proxy, waits for `#status` to read "done: 3/3 echoes",
//    collects the echoes shown in `#log` and saves a screenshot.
// 2. From the same page, opens a WebSocket to the page's own host and sends `__headers__`: the
//    echo answers with the handshake headers it received, i.e. what the browser offered after
//    crossing the proxy (Sec-WebSocket-Extensions: permessage-deflate ...).
// 3. With --deflate-ws: opens a WebSocket to that URL (a proxy in front of a Node `ws` echo with
//    permessage-deflate), round-trips text, binary and 1 MiB, closes with 1000, and reports the
//    extension the browser negotiated and the close it observed.
// Prints one JSON line with everything it saw; exits 1 on any failure.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const value = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const pageUrl = value('--page');
const screenshot = value('--screenshot');
const deflateUrl = value('--deflate-ws');
const executablePath = value('--chromium', '/usr/bin/chromium');
const home = value('--home');
const resolve = value('--resolve');
const untrusted = value('--untrusted');

// Flags from the project's tooling notes: no sandbox (containers), no GPU, and no background
// networking, so Chromium does not keep trying hosts it cannot reach.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wsingress-chromium-'));
  const args = resolve ? [...CHROMIUM_ARGS, `--host-resolver-rules=MAP ${resolve} 127.0.0.1`] : CHROMIUM_ARGS;
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    args,
    env: home ? { ...process.env, HOME: home } : process.env,
    headless: true,
    viewport: { width: 900, height: 480 },
    timeout: 30000,
  });
  const result = { ok: false };
  try {
    const page = context.pages()[0] || (await context.newPage());
    result.userAgent = await page.evaluate(() => navigator.userAgent);
    await page.goto(pageUrl, { waitUntil: 'load', timeout: 15000 });
    await page.waitForFunction(
      () => /^(done|error)/.test(document.getElementById('status').textContent),
      null,
      { timeout: 15000 },
    );
    result.status = await page.textContent('#status');
    result.log = await page.$$eval('#log li', (items) => items.map((li) => li.textContent));
    result.sizes = await page.$$eval('#log li', (items) => items.map((li) => li.title));
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

    // What the backend saw of a handshake from this browser, through the proxy.
    result.backendView = await page.evaluate(() => new Promise((resolve, reject) => {
      const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
      const timer = setTimeout(() => reject(new Error('no __headers__ answer in 10 s')), 10000);
      ws.onopen = () => ws.send('__headers__');
      ws.onmessage = (ev) => {
        clearTimeout(timer);
        ws.close(1000);
        resolve({ info: JSON.parse(ev.data), extensions: ws.extensions });
      };
      ws.onerror = () => reject(new Error('websocket error'));
    }));

    if (deflateUrl) {
      result.deflate = await page.evaluate((url) => new Promise((resolve) => {
        const MIB = 1024 * 1024;
        const big = new Uint8Array(MIB);
        for (let i = 0; i < MIB; i++) big[i] = (i * 31 + 7) & 0xff;
        let text = '';
        while (text.length < MIB) text += 'chromium through wsingress, compressed end to end. ';
        const steps = [
          { name: 'text', data: 'hello from chromium' },
          { name: 'binary', data: new Uint8Array([0, 1, 2, 0x80, 0xfe, 0xff]) },
          { name: '1MiB-binary', data: big },
          { name: '1MiB-text', data: text.slice(0, MIB) },
        ];
        const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
        const done = [];
        let error = null;
        let i = 0;
        const ws = new WebSocket(url);
        ws.binaryType = 'arraybuffer';
        const timer = setTimeout(() => { error = 'timed out'; ws.close(1000); }, 15000);
        ws.onopen = () => ws.send(steps[0].data);
        ws.onmessage = (ev) => {
          const want = steps[i].data;
          const ok = typeof want === 'string' ? ev.data === want
            : ev.data instanceof ArrayBuffer && same(new Uint8Array(ev.data), want);
          if (!ok) { error = steps[i].name + ': echo differs'; ws.close(1000); return; }
          done.push(steps[i].name);
          i += 1;
          if (i < steps.length) ws.send(steps[i].data); else ws.close(1000, 'bye');
        };
        ws.onclose = (ev) => {
          clearTimeout(timer);
          resolve({ extensions: ws.extensions, steps: done, error, close: ev.code, wasClean: ev.wasClean });
        };
      }), deflateUrl);
    }
    result.pageUrl = page.url();
    if (untrusted) {
      const other = await context.newPage();
      result.untrusted = await other.goto(untrusted, { timeout: 15000 }).then(
        () => 'loaded',
        (err) => String(err && err.message || err).split('\n')[0],
      );
      await other.close();
    }
    result.ok = result.status === 'done: 3/3 echoes'
      && (!untrusted || result.untrusted.includes('ERR_CERT'))
      && (!deflateUrl || (result.deflate.error === null && result.deflate.close === 1000));
  } catch (err) {
    result.error = String(err && err.message || err);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.message || err) }) + '\n');
  process.exit(1);
});

#!/usr/bin/env node
// WebSocket checks for the kind e2e suite (tests/e2e/run.sh), run from the host through the
// proxy. Needs the `ws` package (scripts/install-tools.sh node; NODE_PATH from scripts/env.sh).
// Every connection is opened with retries (a replica still syncing may answer 404/503 for a
// moment), so no check fails on a route that is about to appear.
//
//   ws-check.js roundtrip URL PREFIX            one message comes back as PREFIX + message
//   ws-check.js spread URL CONNECTIONS MIN      open connections reach at least MIN echo pods
//   ws-check.js hold URL CONNECTIONS SECONDS READY_FILE
//                                               keep connections open (for /metrics checks)
//   ws-check.js drain URL CONNECTIONS -- CMD... open connections, run CMD (a rollout of the
//                                               backends); every one must end with Close 1001,
//                                               then a new connection must work on a new pod
//   ws-check.js upgrade URL CONNECTIONS -- CMD...
//                                               open connections, run CMD (a rollout of the
//                                               proxy itself); each must either survive (still
//                                               echoes) or end with Close 1001; a reset or any
//                                               other ending fails; the counts are printed
// tests/e2e_local.rs runs every mode against `wsingress serve --manifests` on loopback.
'use strict';

const fs = require('fs');
const { spawn } = require('child_process');
const WebSocket = require('ws');

const INSTANCE_HEADER = 'x-echo-instance';

function fail(message) {
  console.error(`ws-check: FAIL: ${message}`);
  process.exit(1);
}

function log(message) {
  console.log(`ws-check: ${message}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Open one connection; resolves with {ws, instance, closed} once open.
// `closed` resolves with {code, reason} when the connection ends.
function open(url, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { handshakeTimeout: timeoutMs });
    let instance = null;
    let settled = false;
    let closedResolve;
    const closed = new Promise((r) => { closedResolve = r; });
    ws.on('upgrade', (res) => { instance = res.headers[INSTANCE_HEADER] || null; });
    ws.on('unexpected-response', (_req, res) => {
      settled = true;
      reject(new Error(`HTTP ${res.statusCode} instead of 101`));
      res.resume();
      ws.terminate();
    });
    ws.on('open', () => { settled = true; resolve({ ws, instance, closed }); });
    ws.on('error', (err) => { if (!settled) { settled = true; reject(err); } });
    ws.on('close', (code, reason) => closedResolve({ code, reason: reason.toString() }));
  });
}

// Send one text message and wait for the next text message.
function ask(conn, message, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reply to ${JSON.stringify(message)} in ${timeoutMs} ms`)), timeoutMs);
    conn.ws.once('message', (data, isBinary) => {
      clearTimeout(timer);
      if (isBinary) reject(new Error('binary reply to a text message'));
      else resolve(data.toString());
    });
    conn.ws.send(message);
  });
}

// The echo's instance as reported by its `__headers__` command (JSON, maybe after the prefix).
async function instanceOf(conn) {
  const reply = await ask(conn, '__headers__');
  const start = reply.indexOf('{');
  if (start < 0) throw new Error(`__headers__ reply is not JSON: ${reply}`);
  const info = JSON.parse(reply.slice(start));
  if (!info.instance) throw new Error(`__headers__ reply has no instance: ${reply}`);
  if (conn.instance && conn.instance !== info.instance) {
    throw new Error(`${INSTANCE_HEADER} ${conn.instance} differs from __headers__ instance ${info.instance}`);
  }
  return info.instance;
}

// Open with retries: a replica that is still syncing may refuse for a moment.
async function openRetried(url, seconds = 60) {
  return retry(`open ${url}`, seconds, () => open(url));
}

// Retry `attempt` until it resolves or the deadline passes (the route appears asynchronously).
async function retry(what, seconds, attempt) {
  const deadline = Date.now() + seconds * 1000;
  let lastError;
  while (Date.now() < deadline) {
    try {
      return await attempt();
    } catch (err) {
      lastError = err;
      await sleep(1000);
    }
  }
  fail(`${what}: still failing after ${seconds} s: ${lastError && lastError.message}`);
}

async function roundtrip(url, prefix) {
  const message = `hello e2e ${process.pid}`;
  const reply = await retry(`round trip through ${url}`, 90, async () => {
    const conn = await open(url);
    try {
      const got = await ask(conn, message);
      if (got !== prefix + message) throw new Error(`reply ${JSON.stringify(got)}, want ${JSON.stringify(prefix + message)}`);
      return got;
    } finally {
      conn.ws.close(1000);
    }
  });
  log(`round trip ok: ${JSON.stringify(reply)}`);
}

async function spread(url, count, min) {
  const conns = [];
  const seen = new Map();
  for (let i = 0; i < count; i++) {
    const conn = await openRetried(url);
    const instance = await instanceOf(conn);
    seen.set(instance, (seen.get(instance) || 0) + 1);
    conns.push(conn);
  }
  for (const conn of conns) conn.ws.close(1000);
  log(`${count} connections reached ${seen.size} echo pods: ${JSON.stringify(Object.fromEntries(seen))}`);
  if (seen.size < min) fail(`connections reached ${seen.size} echo pods, want at least ${min}`);
}

async function hold(url, count, seconds, readyFile) {
  const conns = [];
  for (let i = 0; i < count; i++) conns.push(await openRetried(url));
  fs.writeFileSync(readyFile, `${count}\n`);
  log(`holding ${count} connections for up to ${seconds} s`);
  const early = Promise.race(conns.map((c) => c.closed)).then((c) => fail(`a held connection closed early: ${c.code} ${c.reason}`));
  await Promise.race([sleep(seconds * 1000), early]);
  for (const conn of conns) conn.ws.close(1000);
}

async function drain(url, count, command) {
  const conns = [];
  const old = new Set();
  for (let i = 0; i < count; i++) {
    const conn = await openRetried(url);
    old.add(await instanceOf(conn));
    conns.push(conn);
  }
  log(`${count} connections open on ${[...old].join(', ')}; running: ${command.join(' ')}`);
  await run(command);

  const timeout = sleep(180000).then(() => 'timeout');
  const all = Promise.all(conns.map((c) => c.closed));
  const result = await Promise.race([all, timeout]);
  if (result === 'timeout') fail('old connections still open 180 s after the rollout');
  const codes = result.map((c) => c.code);
  log(`old connections closed with ${JSON.stringify(codes)}`);
  const wrong = result.filter((c) => c.code !== 1001);
  if (wrong.length) fail(`${wrong.length} of ${count} closed with ${JSON.stringify(wrong)}, want 1001 (going away)`);

  const fresh = await retry('a new connection after the rollout', 60, async () => {
    const conn = await open(url);
    try {
      const instance = await instanceOf(conn);
      const got = await ask(conn, 'after rollout');
      if (!got.endsWith('after rollout')) throw new Error(`reply ${JSON.stringify(got)}`);
      return instance;
    } finally {
      conn.ws.close(1000);
    }
  });
  if (old.has(fresh)) fail(`the new connection reached ${fresh}, a pod from before the rollout`);
  log(`new connection ok on ${fresh}`);
}

// Run CMD to completion; fail unless it exits 0.
async function run(command) {
  const child = spawn(command[0], command.slice(1), { stdio: 'inherit' });
  const exit = await new Promise((resolve) => child.on('exit', resolve));
  if (exit !== 0) fail(`${command.join(' ')} exited ${exit}`);
}

// Open many connections at once (bounded concurrency), each retried.
async function openMany(url, count, parallel = 20) {
  const conns = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      conns[i] = await openRetried(url);
      await ask(conns[i], `warm ${i}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return conns;
}

// A rollout of the proxy under CONNECTIONS open tunnels: each survives or gets Close 1001.
async function upgrade(url, count, command) {
  const conns = await openMany(url, count);
  const endings = conns.map((c) => c.closed.then((e) => ({ ...e, at: Date.now() })));
  log(`${count} tunnels open; running: ${command.join(' ')}`);
  await run(command);
  // The old pods are gone once CMD returns (helm upgrade --wait); give late closes a moment.
  const settle = Date.now() + 15000;
  const outcome = { survived: 0, closed1001: 0, reset: 0, other: 0 };
  const bad = [];
  for (let i = 0; i < count; i++) {
    const left = Math.max(0, settle - Date.now());
    const ended = await Promise.race([endings[i], sleep(left).then(() => null)]);
    if (ended === null) {
      // Still open: it must still work.
      try {
        const got = await ask(conns[i], `still there ${i}`);
        if (!got.endsWith(`still there ${i}`)) throw new Error(`reply ${JSON.stringify(got)}`);
        outcome.survived++;
      } catch (err) {
        outcome.other++;
        bad.push(`#${i} open but broken: ${err.message}`);
      }
      conns[i].ws.close(1000);
    } else if (ended.code === 1001) {
      outcome.closed1001++;
    } else if (ended.code === 1006) {
      // ws reports 1006 when TCP ended without a Close frame: a reset or a dropped tunnel.
      outcome.reset++;
      bad.push(`#${i} ended without a Close frame (1006)`);
    } else {
      outcome.other++;
      bad.push(`#${i} closed with ${ended.code} ${JSON.stringify(ended.reason)}`);
    }
  }
  log(`after the rollout: ${JSON.stringify(outcome)}`);
  if (outcome.reset || outcome.other) fail(`${outcome.reset + outcome.other} of ${count} tunnels neither survived nor got 1001: ${bad.slice(0, 10).join('; ')}`);
  if (outcome.survived + outcome.closed1001 !== count) fail(`counted ${JSON.stringify(outcome)} for ${count} tunnels`);
  // And the proxy serves new tunnels after the rollout.
  const conn = await openRetried(url);
  await ask(conn, 'after upgrade');
  conn.ws.close(1000);
  log('new tunnel ok after the rollout');
}

async function main() {
  const [mode, url, ...rest] = process.argv.slice(2);
  if (!url) fail('usage: ws-check.js roundtrip|spread|hold|drain|upgrade URL ...');
  switch (mode) {
    case 'roundtrip': return roundtrip(url, rest[0] || '');
    case 'spread': return spread(url, Number(rest[0] || 10), Number(rest[1] || 2));
    case 'hold': return hold(url, Number(rest[0]), Number(rest[1]), rest[2]);
    case 'drain':
    case 'upgrade': {
      const sep = rest.indexOf('--');
      if (sep < 0) fail(`${mode} needs -- COMMAND`);
      const check = mode === 'drain' ? drain : upgrade;
      return check(url, Number(rest[0]), rest.slice(sep + 1));
    }
    default: return fail(`unknown mode ${mode}`);
  }
}

main().then(() => process.exit(0), (err) => fail(err.stack || String(err)));

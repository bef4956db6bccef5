// A Node `ws` client for the peer matrix (tests/peers.rs): one round trip each with a text
// message, a binary message and a 1 MiB message, then a clean close (1000).
//
//   node client.js URL [--big-text] [--no-deflate]
//
// Prints one JSON line: {"ok": true, "close": CODE, "extensions": "<negotiated>", "steps": [...]}
// or {"ok": false, "error": "..."} (exit status 1). `--big-text` sends the 1 MiB message as text
// (for echo servers that answer every message as text).
'use strict';
const WebSocket = require('ws');

const args = process.argv.slice(2);
const url = args.find((a) => !a.startsWith('--'));
const bigText = args.includes('--big-text');
const deflate = !args.includes('--no-deflate');
const MIB = 1024 * 1024;

function pattern(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}
function bigMessage() {
  if (!bigText) return pattern(MIB);
  let s = '';
  while (s.length < MIB) s += 'wsingress peer matrix 1 MiB text. ';
  return s.slice(0, MIB);
}

const steps = [
  { name: 'text', data: 'hello from node ws', binary: false },
  { name: 'binary', data: Buffer.from([0, 1, 2, 0x80, 0xfe, 0xff]), binary: true },
  { name: '1MiB', data: bigMessage(), binary: !bigText },
];

function finish(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}
const timer = setTimeout(() => finish({ ok: false, error: 'timed out after 20 s' }), 20000);

const ws = new WebSocket(url, { perMessageDeflate: deflate, maxPayload: 64 * MIB });
const done = [];
let i = 0;
ws.on('open', () => ws.send(steps[0].data, { binary: steps[0].binary }));
ws.on('message', (data, isBinary) => {
  const step = steps[i];
  const want = Buffer.isBuffer(step.data) ? step.data : Buffer.from(step.data);
  if (isBinary !== step.binary) return finish({ ok: false, error: `${step.name}: came back as ${isBinary ? 'binary' : 'text'}` });
  if (!Buffer.from(data).equals(want)) return finish({ ok: false, error: `${step.name}: echo differs (${data.length} bytes, sent ${want.length})` });
  done.push(step.name);
  i += 1;
  if (i < steps.length) ws.send(steps[i].data, { binary: steps[i].binary });
  else ws.close(1000, 'bye');
});
ws.on('close', (code, reason) => {
  clearTimeout(timer);
  if (done.length !== steps.length) return finish({ ok: false, error: `closed early with ${code} after ${done.join(',')}` });
  finish({ ok: true, close: code, reason: reason.toString(), extensions: ws.extensions, steps: done });
});
ws.on('error', (err) => finish({ ok: false, error: err.message }));

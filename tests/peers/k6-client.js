// A k6 client for the peer matrix (tests/peers.rs): one round trip each with a text message, a
// binary message and a 1 MiB message, then a clean close (1000). Uses `k6/ws`, whose close
// handler receives the close code the client observed (the browser-like experimental API does not
// expose it). Target from the environment: k6 run -e URL=ws://HOST:PORT/ k6-client.js
// Logs one line: RESULT {"ok": ..., "close": CODE, "steps": [...]}.
import ws from 'k6/ws';

const MIB = 1024 * 1024;

export const options = { vus: 1, iterations: 1 };

function pattern(n) {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i++) a[i] = (i * 31 + 7) & 0xff;
  return a.buffer;
}
function sameBytes(x, y) {
  const a = new Uint8Array(x);
  const b = new Uint8Array(y);
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export default function () {
  const steps = [
    { name: 'text', data: 'hello from k6' },
    { name: 'binary', data: new Uint8Array([0, 1, 2, 0x80, 0xfe, 0xff]).buffer },
    { name: '1MiB', data: pattern(MIB) },
  ];
  const done = [];
  let error = null;
  let closeCode = null;
  let i = 0;
  const send = (socket) => {
    const step = steps[i];
    if (typeof step.data === 'string') socket.send(step.data);
    else socket.sendBinary(step.data);
  };
  const check = (socket, ok, kind) => {
    if (error) return;
    if (!ok) {
      error = steps[i].name + ': echo differs (' + kind + ')';
      socket.close(1000);
      return;
    }
    done.push(steps[i].name);
    i += 1;
    if (i < steps.length) send(socket);
    else socket.close(1000);
  };
  const response = ws.connect(__ENV.URL, {}, (socket) => {
    socket.on('open', () => send(socket));
    socket.on('message', (text) => check(socket, text === steps[i].data, 'text'));
    socket.on('binaryMessage', (data) => check(socket, typeof steps[i].data !== 'string' && sameBytes(data, steps[i].data), 'binary'));
    socket.on('error', (e) => {
      if (!error) error = 'error: ' + e.error();
    });
    socket.on('close', (code) => {
      closeCode = code;
    });
    socket.setTimeout(() => {
      if (!error) error = 'timed out after 20 s';
      socket.close(1000);
    }, 20000);
  });
  const status = response ? response.status : 0;
  console.log('RESULT ' + JSON.stringify({ ok: !error && done.length === steps.length, status, close: closeCode, error, steps: done }));
}

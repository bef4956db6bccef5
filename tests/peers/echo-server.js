// An exact WebSocket echo server on Node `ws` (each message goes back with its own type, Close
// frames are answered with the peer's code and reason). Used as a backend by scripts/autobahn.sh
// and tests/peers.rs.
//
//   node echo-server.js [--deflate] [--host 127.0.0.1] [--port 0]
//
// Prints one JSON line {"listening": PORT} once bound, then one line per accepted handshake:
// {"handshake": {"offered": "<Sec-WebSocket-Extensions of the request>", "extensions": "<negotiated>"}}.
// `maxFragments: 0` lifts ws 8's default cap of 16384 fragments per message (Autobahn 9.3/9.4 send more).
'use strict';
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const value = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};

const server = new WebSocketServer({
  host: value('--host', '127.0.0.1'),
  port: Number(value('--port', '0')),
  perMessageDeflate: flag('--deflate'),
  maxPayload: 64 * 1024 * 1024,
  maxFragments: 0,
});

server.on('listening', () => {
  process.stdout.write(JSON.stringify({ listening: server.address().port }) + '\n');
});
server.on('connection', (ws, request) => {
  const offered = request.headers['sec-websocket-extensions'] || '';
  process.stdout.write(JSON.stringify({ handshake: { offered, extensions: ws.extensions } }) + '\n');
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {}); // protocol errors: ws has already sent its Close (1002/1007/1009)
});
server.on('error', (err) => {
  process.stderr.write(`echo-server: ${err.message}\n`);
  process.exit(1);
});
process.on('SIGTERM', () => process.exit(0));

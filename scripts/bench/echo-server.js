// Stand-in WebSocket echo backend for scripts/bench.sh while `wsingress echo` is not available:
// echoes every message with its type kept. Usage: node echo-server.js PORT
'use strict';
const path = require('path');
const WebSocket = require(path.join(process.env.WS_NODE_MODULES || '', 'ws'));
const port = Number(process.argv[2]);
const server = new WebSocket.Server({ host: '127.0.0.1', port, perMessageDeflate: false, maxPayload: 64 << 20 });
server.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
server.on('listening', () => console.log(`echo listening on 127.0.0.1:${port}`));

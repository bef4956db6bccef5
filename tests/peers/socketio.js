// Socket.IO peers for tests/affinity.rs (npm socket.io and socket.io-client, installed by
// scripts/install-tools.sh node).
//
//   node socketio.js server NAME         a Socket.IO server on 127.0.0.1 (ephemeral port); prints
//                                        "listening PORT", then "session-unknown" for each request
//                                        that named a session it does not have
//   node socketio.js clients URL N MSGS  N clients, polling first then upgrading to WebSocket, each
//                                        sending MSGS acknowledged messages; prints one JSON summary
'use strict';

const mode = process.argv[2];

if (mode === 'server') {
  const { Server } = require('socket.io');
  const http = require('http');
  const name = process.argv[3] || 'server';
  const httpServer = http.createServer();
  const io = new Server(httpServer, { transports: ['polling', 'websocket'], pingInterval: 60000, pingTimeout: 60000 });
  io.engine.on('connection_error', (err) => {
    // code 1: "Session ID unknown", the failure cookie affinity prevents.
    console.log(err.code === 1 ? 'session-unknown' : `connection-error ${err.code} ${err.message}`);
  });
  io.on('connection', (socket) => {
    socket.on('msg', (text, ack) => {
      if (typeof ack === 'function') ack(`${name}:${socket.conn.transport.name}:${text}`);
    });
  });
  httpServer.listen(0, '127.0.0.1', () => console.log(`listening ${httpServer.address().port}`));
} else if (mode === 'clients') {
  const { io } = require('socket.io-client');
  const url = process.argv[3];
  const n = Number(process.argv[4] || '50');
  const msgs = Number(process.argv[5] || '3');
  const summary = { clients: n, connected: 0, upgraded: 0, acked: 0, wrong: 0, errors: [], servers: {} };
  const one = (i) =>
    new Promise((resolve) => {
      let done = false;
      const finish = (socket) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        socket.close();
        resolve();
      };
      // withCredentials: in Node.js the client then keeps the cookies its requests receive
      // (a cookie jar), as a browser does, and sends them on every poll and on the upgrade.
      const socket = io(url, {
        transports: ['polling', 'websocket'],
        upgrade: true,
        withCredentials: true,
        reconnection: false,
        forceNew: true,
        timeout: 5000,
      });
      const timer = setTimeout(() => {
        summary.errors.push(`client ${i}: timed out`);
        finish(socket);
      }, 8000);
      socket.on('connect_error', (err) => {
        summary.errors.push(`client ${i}: connect_error: ${err.message} ${err.description ? JSON.stringify(String(err.description)) : ''}`);
        finish(socket);
      });
      socket.on('disconnect', (reason) => {
        if (!done) {
          summary.errors.push(`client ${i}: disconnect: ${reason}`);
          finish(socket);
        }
      });
      socket.on('connect', () => {
        summary.connected += 1;
        const upgraded = () =>
          new Promise((ok) => {
            if (socket.io.engine.transport.name === 'websocket') return ok();
            socket.io.engine.once('upgrade', () => ok());
          });
        upgraded().then(async () => {
          summary.upgraded += 1;
          for (let k = 0; k < msgs; k++) {
            const text = `c${i}-${k}`;
            const reply = await socket.timeout(10000).emitWithAck('msg', text).catch((e) => `error ${e.message}`);
            const parts = String(reply).split(':');
            if (parts.length === 3 && parts[1] === 'websocket' && parts[2] === text) {
              summary.acked += 1;
              summary.servers[parts[0]] = (summary.servers[parts[0]] || 0) + 1;
            } else {
              summary.wrong += 1;
              summary.errors.push(`client ${i}: reply ${reply}`);
            }
          }
          finish(socket);
        });
      });
    });
  // Connect in waves of 10, as a page load would, not all at once.
  (async () => {
    for (let i = 0; i < n; i += 10) {
      await Promise.all(Array.from({ length: Math.min(10, n - i) }, (_, k) => one(i + k)));
    }
    console.log(JSON.stringify(summary));
    process.exit(0);
  })();
} else {
  console.error('usage: socketio.js server NAME | clients URL N MSGS');
  process.exit(2);
}

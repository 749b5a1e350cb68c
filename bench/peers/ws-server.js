// A plain npm `ws` server, the peer Tidings' gateway is compared with: it
// holds WebSockets and sends the body of `POST /broadcast` to every open
// one, answering how many. A socket opened on `/?room=<name>` is in that
// room, and `POST /broadcast?room=<name>` sends to that room's sockets only
// (Tidings' `room:{id}` channels). It listens on a free port of 127.0.0.1
// and prints `listening <port>`. Started by tidings-bench; nothing else.
'use strict';
const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

// Sockets by room ('' for those opened without one).
const rooms = new Map();

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (req.method !== 'POST' || url.pathname !== '/broadcast') {
    res.writeHead(404).end();
    return;
  }
  const room = url.searchParams.get('room');
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const payload = Buffer.concat(chunks).toString('utf8');
    const clients = room === null ? wss.clients : rooms.get(room) || [];
    let sent = 0;
    for (const client of clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(payload);
        sent += 1;
      }
    }
    res.end(String(sent));
  });
});

// No per-message compression: Tidings' gateway sends frames uncompressed.
const wss = new WebSocketServer({ server, perMessageDeflate: false });

wss.on('connection', (socket, req) => {
  const room = new URL(req.url, 'http://127.0.0.1').searchParams.get('room') || '';
  if (!rooms.has(room)) rooms.set(room, new Set());
  rooms.get(room).add(socket);
  socket.on('close', () => rooms.get(room).delete(socket));
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

// A socket.io server, the second peer Tidings' gateway is compared with:
// WebSocket transport only (the generator speaks Engine.IO 4 over it), and
// `POST /broadcast` emits its JSON body as an `event` to every socket,
// answering how many. A socket opened with `room=<name>` in its query
// (`/socket.io/?EIO=4&transport=websocket&room=<name>`) joins that room, and
// `POST /broadcast?room=<name>` emits to that room's sockets only (Tidings'
// `room:{id}` channels, as the npm `ws` peer's rooms). It listens on a free
// port of 127.0.0.1 and prints `listening <port>`. Started by
// tidings-bench; nothing else.
'use strict';
const http = require('node:http');
const { Server } = require('socket.io');

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
    let payload;
    try {
      payload = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      res.writeHead(400).end(String(e));
      return;
    }
    if (room === null) {
      io.emit('event', payload);
      res.end(String(io.engine.clientsCount));
    } else {
      const members = io.of('/').adapter.rooms.get(room);
      io.to(room).emit('event', payload);
      res.end(String(members ? members.size : 0));
    }
  });
});

const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  // No per-message compression: Tidings' gateway sends frames uncompressed.
  perMessageDeflate: false,
});

io.on('connection', (socket) => {
  const room = socket.handshake.query.room;
  if (typeof room === 'string' && room !== '') socket.join(room);
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

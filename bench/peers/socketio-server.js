// A socket.io server, the second peer Tidings' gateway is compared with:
// WebSocket transport only (the generator speaks Engine.IO 4 over it), and
// `POST /broadcast` emits its JSON body as an `event` to every socket,
// answering how many. It listens on a free port of 127.0.0.1 and prints
// `listening <port>`. Started by tidings-bench; nothing else.
'use strict';
const http = require('node:http');
const { Server } = require('socket.io');

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/broadcast') {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const payload = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    io.emit('event', payload);
    res.end(String(io.engine.clientsCount));
  });
});

const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  // No per-message compression: Tidings' gateway sends frames uncompressed.
  perMessageDeflate: false,
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

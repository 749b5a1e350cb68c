// A plain npm `ws` server, the peer Tidings' gateway is compared with: it
// holds WebSockets and sends the body of `POST /broadcast` to every open
// one, answering how many. It listens on a free port of 127.0.0.1 and
// prints `listening <port>`. Started by tidings-bench; nothing else.
'use strict';
const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/broadcast') {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const payload = Buffer.concat(chunks).toString('utf8');
    let sent = 0;
    for (const client of wss.clients) {
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

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

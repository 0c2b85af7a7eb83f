// Seed 004 (shared/seeds/004-socketio-rest-push.md), "Example Client Code",
// exactly as the README shows it. The README's block has no import (its
// page loads socket.io-client as a script tag); this line is the one
// addition, as a bundled app would have it:
import { io } from 'socket.io-client';
// Only the URL and the token are the app's configuration (process.env);
// tests/test_seed_clients.py checks the lines between the markers against
// the README.
// ---- seed README snippet begins
const socket = io(process.env.CHATD_URL, {
  extraHeaders: {
    'Authorization': `Bearer ${process.env.CHATD_TOKEN}`
  }
});

socket.on('connect', () => {
  console.log('Connected to WebSocket server');
});

socket.on('authenticated', (data) => {
  console.log('Authenticated:', data);
});

socket.on('message', (data) => {
  console.log('Received message:', data);
});

// Send ping
socket.emit('ping');

socket.on('pong', (data) => {
  console.log('Received pong:', data);
});
// ---- seed README snippet ends

// Seed 001 (shared/seeds/001-socketio-social-live.md), "Client Connection
// Example", exactly as the README shows it. Only the URL and the token are
// the app's configuration (process.env), as an app team would set them;
// tests/test_seed_clients.py checks that the lines between the markers are
// the README's block with just those two literals replaced.
// ---- seed README snippet begins
import { io } from 'socket.io-client';

// Connect with authentication
const socket = io(process.env.CHATD_URL, {
  auth: {
    token: process.env.CHATD_TOKEN
  }
});

// Handle connection
socket.on('connect', () => {
  console.log('Connected to WebSocket server');
});

// Handle errors
socket.on('error', (error) => {
  console.error('Socket error:', error);
});

// Join a chat
socket.emit('chat:join', 'chat-id-123');

// Listen for messages
socket.on('chat:message', (message) => {
  console.log('New message:', message);
});

// Send a message
socket.emit('chat:message', {
  chatId: 'chat-id-123',
  content: 'Hello, world!'
});
// ---- seed README snippet ends

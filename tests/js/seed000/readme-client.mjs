// Seed 000's "Example client authentication" (shared/seeds/000-ws-chat-friends.md,
// section Authentication), as the README shows it: only the URL and the
// token come from the environment (the app's configuration).
// tests/test_dialect_seed000.py checks that this copy is the README's.
// ---- seed README snippet begins
const ws = new WebSocket(process.env.CHATD_WS_URL);

ws.onopen = () => {
  // Send authentication
  ws.send(JSON.stringify({
    type: 'authenticate',
    token: process.env.CHATD_TOKEN
  }));
};

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  
  switch (data.type) {
    case 'authenticated':
      console.log('Authenticated successfully');
      break;
    case 'message':
      console.log('New message:', data.message);
      break;
    // Handle other events...
  }
};
// ---- seed README snippet ends

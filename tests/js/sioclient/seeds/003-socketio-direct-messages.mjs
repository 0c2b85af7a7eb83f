// Seed 003 (shared/seeds/003-socketio-direct-messages.md), "Client
// Connection Example", exactly as the README shows it (TypeScript without
// a single type annotation, so it runs as JavaScript). Only the URL (still
// ws://) and the token are the app's configuration (process.env);
// tests/test_seed_clients.py checks the lines between the markers against
// the README.
// ---- seed README snippet begins
import { io } from "socket.io-client"

const socket = io(process.env.CHATD_WS_URL, {
  auth: {
    token: process.env.CHATD_TOKEN
  }
})

// Listen for connection
socket.on("connect", () => {
  console.log("Connected to WebSocket server")
})

// Send a message
socket.emit("message:send", {
  recipientId: "user-id",
  content: "Hello!",
  sessionId: "optional-session-id"
})

// Receive messages
socket.on("message:receive", (message) => {
  console.log("New message:", message)
})

// Listen for online status updates
socket.on("user:online", ({ userId }) => {
  console.log(`User ${userId} is now online`)
})

socket.on("user:offline", ({ userId }) => {
  console.log(`User ${userId} is now offline`)
})
// ---- seed README snippet ends

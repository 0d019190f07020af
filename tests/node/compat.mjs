// Drives the official socket.io-client against a running notify-bridge, for the Rust test
// `node_compat`. Talks over stdout, one line per step:
//   REFUSED <message>        the handshake was refused (connect_error)
//   JOINED <ack JSON>        join-room was acknowledged
//   NOTIFICATION <JSON>      a notification arrived (then the script exits 0)
// Usage: node compat.mjs --base URL --transport websocket|polling --room ROOM [--token T] [--token-in auth|query]
import { io } from "socket.io-client";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    base: { type: "string" },
    transport: { type: "string", default: "websocket" },
    room: { type: "string" },
    token: { type: "string" },
    "token-in": { type: "string", default: "auth" },
  },
});

const options = { transports: [args.transport], reconnection: false, timeout: 5000 };
if (args.token && args["token-in"] === "auth") options.auth = { token: args.token };
if (args.token && args["token-in"] === "query") options.query = { token: args.token };

const socket = io(args.base, options);
const fail = (why) => {
  console.error(why);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 15000).unref();

socket.on("connect_error", (err) => {
  console.log(`REFUSED ${err.message}`);
  process.exit(0);
});
socket.on("connect", async () => {
  if (socket.io.engine.transport.name !== args.transport) fail(`transport is ${socket.io.engine.transport.name}`);
  const ack = await socket.timeout(5000).emitWithAck("join-room", args.room);
  console.log(`JOINED ${JSON.stringify(ack)}`);
});
socket.on("notification", (n) => {
  console.log(`NOTIFICATION ${JSON.stringify(n)}`);
  socket.close();
  process.exit(0);
});

// Drives the official socket.io-client against a running notify-bridge, for the Rust test
// `node_compat`. Talks over stdout, one line per step:
//   REFUSED <message>        the handshake was refused (connect_error)
//   JOINED <ack JSON>        join-room was acknowledged
//   NOTIFICATION <JSON>      a notification arrived (then the script exits 0)
// Usage: node compat.mjs --base URL --transport websocket|polling|upgrade --room ROOM [--token T] [--token-in auth|query]
// `upgrade` is the client's default: connect over polling, then upgrade to websocket; the join
// and the notification then travel over the upgraded websocket.
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

const upgrade = args.transport === "upgrade";
const transports = upgrade ? ["polling", "websocket"] : [args.transport];
const options = { transports, reconnection: false, timeout: 5000 };
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
const upgraded = () =>
  new Promise((resolve) => {
    if (socket.io.engine.transport.name === "websocket") resolve();
    else socket.io.engine.once("upgrade", resolve);
  });
socket.on("connect", async () => {
  const expected = upgrade ? ["polling", "websocket"] : [args.transport];
  if (!expected.includes(socket.io.engine.transport.name)) fail(`transport is ${socket.io.engine.transport.name}`);
  if (upgrade) await upgraded();
  const ack = await socket.timeout(5000).emitWithAck("join-room", args.room);
  console.log(`JOINED ${JSON.stringify(ack)}`);
});
socket.on("notification", (n) => {
  if (upgrade && socket.io.engine.transport.name !== "websocket") fail("the notification came before the upgrade");
  console.log(`NOTIFICATION ${JSON.stringify(n)}`);
  socket.close();
  process.exit(0);
});

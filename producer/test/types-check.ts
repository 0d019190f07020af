// Compiled by `tsc --noEmit` only: the declarations describe how the publisher is used.
import { createPublisher, PublishError, type NotificationBody } from "../index.js";

const publisher = createPublisher({ url: "amqp://localhost", exchange: "notifications", reconnect: { maxDelayMs: 5000 } });
const body: NotificationBody = { type: "charging.started", recipients: [123, "456"], rooms: ["cms:stations"] };
const done: Promise<string> = publisher.publish("session", body, { messageId: "m-1" }).then((r) => r.messageId);
const status: "connecting" | "connected" | "reconnecting" | "closed" = publisher.health().status;
publisher.on("reconnecting", ({ attempt, delayMs }) => void (attempt + delayMs));
done.catch((e: unknown) => {
  if (e instanceof PublishError && e.code === "timeout") void status;
});
// @ts-expect-error `type` is required
void publisher.publish("session", { data: 1 });
// @ts-expect-error a room is customer:<id> or cms:<name>
void publisher.publish("session", { type: "t", rooms: ["lobby"] });
void publisher.close();

// A client of Heddle's WebSocket sync (org.heddle.ws), on Node's built-in WebSocket:
// authenticate, subscribe from a token, wait for a message already sent in a room, send one
// over the socket, and wait until a sync push carries it back. Prints one JSON line:
// {"received": [event IDs of the room's m.room.message events, in push order], "sent": id}.
//
//   node --experimental-websocket ws_sync_client.mjs <ws url> <access token> <room id> \
//        <since> <body to wait for> <body to send>
//
// Exit status 0 on success, 1 on a protocol error frame or a closed socket, 2 on timeout.

const [url, accessToken, roomId, since, awaitedBody, sentBody] = process.argv.slice(2);
const TIMEOUT_MS = 20000;

const received = [];
let sentEventId = null;
let awaitedSeen = false;
let sentSeen = false;

const socket = new WebSocket(url);
const timer = setTimeout(() => finish(2, "timed out"), TIMEOUT_MS);

function finish(status, reason) {
  clearTimeout(timer);
  if (status === 0) {
    console.log(JSON.stringify({ received, sent: sentEventId }));
  } else {
    console.error(`ws_sync_client: ${reason}`);
  }
  socket.close(1000);
  process.exitCode = status;
}

function request(message) {
  socket.send(JSON.stringify(message));
}

function maybeDone() {
  if (awaitedSeen && sentSeen) finish(0);
}

socket.addEventListener("open", () => {
  request({ type: "auth", request_id: "auth", access_token: accessToken });
  request({ type: "subscribe", request_id: "subscribe", since });
});

socket.addEventListener("message", (message) => {
  const frame = JSON.parse(message.data);
  if (frame.type === "error") {
    finish(1, `error frame: ${JSON.stringify(frame)}`);
    return;
  }
  if (frame.type === "response") {
    if (frame.request_id === "send") {
      sentEventId = frame.body.event_id;
      sentSeen = sentSeen || received.includes(sentEventId);
      maybeDone();
    }
    return;
  }
  if (frame.type !== "sync") return;
  const room = frame.body.rooms?.join?.[roomId];
  for (const event of room?.timeline?.events ?? []) {
    if (event.type !== "m.room.message") continue;
    received.push(event.event_id);
    if (event.content.body === awaitedBody && !awaitedSeen) {
      awaitedSeen = true;
      request({
        type: "send", request_id: "send", room_id: roomId, event_type: "m.room.message",
        txn_id: "node-1", body: { msgtype: "m.text", body: sentBody },
      });
    }
    if (sentEventId !== null && event.event_id === sentEventId) sentSeen = true;
  }
  maybeDone();
});

socket.addEventListener("close", (event) => {
  if (process.exitCode === undefined) finish(1, `closed: ${event.code} ${event.reason}`);
});

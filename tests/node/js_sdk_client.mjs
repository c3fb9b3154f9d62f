// A matrix-js-sdk client (as Element Web uses it, threads on): sync, then report what its
// `Room` object shows of one room: unread counts, the thread list, each thread's length and
// unread count. With `--read`, it then sends a read receipt for the main timeline's latest
// event and waits until the main timeline's unread count falls to 0. Prints one JSON line
// per report:
//   {"phase": "before"|"after", "main": {"total", "highlight"},
//    "unread": {"total", "highlight"}, "threads": [{"id", "replies", "unread"}]}
//
//   node js_sdk_client.mjs <base url> <user id> <access token> <device id> <room id> \
//        <threads expected> [--read]
//
// Exit status 0 on success, 2 on timeout (with what was seen on stderr).

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const [baseUrl, userId, accessToken, deviceId, roomId, threadsExpected, mode] =
  process.argv.slice(2);
const TIMEOUT_MS = 30000;

logger.disableAll();
const client = sdk.createClient({ baseUrl, userId, accessToken, deviceId });
const timer = setTimeout(() => {
  console.error(`js_sdk_client: timed out; last seen ${JSON.stringify(report("timeout"))}`);
  client.stopClient();
  process.exit(2);
}, TIMEOUT_MS);

function report(phase) {
  const room = client.getRoom(roomId);
  if (room === null) return { phase, room: null };
  const threads = room.getThreads().map((thread) => ({
    id: thread.id,
    // The server's summary of the thread, as the client reads it from the root. (Its own
    // `thread.length` starts from that count and adds the replies it sees arrive, which
    // can count the first ones twice, depending on the order of its own async steps.)
    replies: thread.rootEvent?.getServerAggregatedRelation("m.thread")?.count ?? null,
    unread: room.getThreadUnreadNotificationCount(thread.id, sdk.NotificationCountType.Total),
  }));
  threads.sort((a, b) => (a.id < b.id ? -1 : 1));
  return {
    phase,
    // The main timeline's counts, and the room's badge (main timeline and every thread).
    main: {
      total: room.getRoomUnreadNotificationCount(sdk.NotificationCountType.Total),
      highlight: room.getRoomUnreadNotificationCount(sdk.NotificationCountType.Highlight),
    },
    unread: {
      total: room.getUnreadNotificationCount(sdk.NotificationCountType.Total),
      highlight: room.getUnreadNotificationCount(sdk.NotificationCountType.Highlight),
    },
    threads,
  };
}

async function until(condition) {
  while (!condition()) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function main() {
  await client.startClient({ threadSupport: true, initialSyncLimit: 20 });
  await until(() => client.getSyncState() === "SYNCING" || client.getSyncState() === "PREPARED");
  const expected = Number(threadsExpected);
  await until(() => {
    const room = client.getRoom(roomId);
    return room !== null && room.getThreads().length >= expected;
  });
  console.log(JSON.stringify(report("before")));
  if (mode === "--read") {
    const room = client.getRoom(roomId);
    const events = room.getLiveTimeline().getEvents();
    await client.sendReadReceipt(events[events.length - 1]);
    await until(
      () => room.getRoomUnreadNotificationCount(sdk.NotificationCountType.Total) === 0,
    );
    console.log(JSON.stringify(report("after")));
  }
  clearTimeout(timer);
  client.stopClient();
  process.exit(0);
}

main().catch((error) => {
  console.error(`js_sdk_client: ${error.stack ?? error}`);
  process.exit(1);
});

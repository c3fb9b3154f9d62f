// A matrix-js-sdk client and a room upgrade (tests/test_js_sdk.py). Two modes:
//   upgrade: upgrade the room with the SDK's `upgradeRoom` (the server's /upgrade endpoint),
//            then wait until the client has the replacement room;
//   follow:  wait for the room's tombstone, then join the room it names, through the
//            tombstone sender's server, as the spec asks of clients.
// Either way it then prints one JSON line with what the SDK makes of the upgrade:
//   {"replacement": <room id>, "tombstone": <event id>, "history": [<room ids, oldest first>],
//    "predecessor": {"roomId", "eventId"} | null, "version": <new room's version>}
//
//   node js_sdk_upgrade.mjs <base url> <user id> <access token> <device id> <room id> \
//        upgrade <new version> | follow
//
// Exit status 0 on success, 2 on timeout (with what was seen on stderr).

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const [baseUrl, userId, accessToken, deviceId, roomId, mode, newVersion] =
  process.argv.slice(2);
const TIMEOUT_MS = 30000;

logger.disableAll();
const client = sdk.createClient({ baseUrl, userId, accessToken, deviceId });
let seen = "nothing yet";
const timer = setTimeout(() => {
  console.error(`js_sdk_upgrade: timed out; last seen ${seen}`);
  client.stopClient();
  process.exit(2);
}, TIMEOUT_MS);

async function until(condition) {
  while (!condition()) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function tombstoneOf(id) {
  return client.getRoom(id)?.currentState.getStateEvents("m.room.tombstone", "") ?? null;
}

async function main() {
  await client.startClient({ initialSyncLimit: 20 });
  await until(() => client.getRoom(roomId) !== null);
  if (mode === "upgrade") {
    const answer = await client.upgradeRoom(roomId, newVersion);
    seen = `upgrade answered ${JSON.stringify(answer)}`;
  } else {
    await until(() => tombstoneOf(roomId) !== null);
    const tombstone = tombstoneOf(roomId);
    const via = tombstone.getSender().split(":").slice(1).join(":");
    seen = `tombstone ${tombstone.getId()}`;
    await client.joinRoom(tombstone.getContent().replacement_room, { viaServers: [via] });
  }
  await until(() => tombstoneOf(roomId) !== null);
  const tombstone = tombstoneOf(roomId);
  const replacement = tombstone.getContent().replacement_room;
  await until(() => client.getRoom(replacement)?.getMyMembership() === "join");
  const newRoom = client.getRoom(replacement);
  await until(() => newRoom.currentState.getStateEvents("m.room.create", "") !== null);
  console.log(
    JSON.stringify({
      replacement,
      tombstone: tombstone.getId(),
      history: client.getRoomUpgradeHistory(roomId, true).map((room) => room.roomId),
      predecessor: newRoom.findPredecessor(),
      version: newRoom.getVersion(),
    }),
  );
  clearTimeout(timer);
  client.stopClient();
  process.exit(0);
}

main().catch((error) => {
  console.error(`js_sdk_upgrade: ${error.stack ?? error}`);
  process.exit(1);
});

// Hostile NBD sessions from a fixed seed: random and mutated option haggling, bad lengths,
// commands out of order, oversized requests, truncated frames, STARTTLS misuse. The server must
// never crash, end every session within its timeout, leak no descriptor and no reader, and
// still serve a good client the right bytes afterwards.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Command, Info, MAX_OPTION_LENGTH, MAX_PAYLOAD, Option, OPTION_MAGIC, REQUEST_MAGIC } from '../../src/nbd/wire';
import { encodeInfoRequest, encodeMetaContextQuery, encodeRequest, RawClient } from '../nbd/helpers/raw-client';
import {
  captureLogger, connectReady, EXPORT_NAME, EXPORT_SIZE, makeFixture, removeFixture, startServer, waitFor,
  type Fixture, type LogRecord, type Running,
} from '../nbd/helpers/server';
import { seeded } from '../helpers/seeded';

const SEED = 0x5eed_2026;
const SESSIONS = 2000;
/** One session in this many runs over TLS (a handshake costs far more CPU than a plaintext session). */
const TLS_EVERY = 20;
const CONCURRENCY = 16;
/** Far above the server's own deadlines (1 s handshake, 1 s stall, 2 s idle): a session over this hangs. */
const SESSION_TIMEOUT_MS = 15_000;

class Dice {
  constructor(readonly random: () => number) {}
  int(below: number): number { return Math.floor(this.random() * below); }
  chance(p: number): boolean { return this.random() < p; }
  pick<T>(items: readonly T[]): T { return items[this.int(items.length)]; }
  bytes(length: number): Buffer { return Buffer.from(Array.from({ length }, () => this.int(256))); }
}

function option(code: number, data: Buffer, length = data.length, magic = OPTION_MAGIC): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(magic, 0);
  header.writeUInt32BE(code >>> 0, 8);
  header.writeUInt32BE(length >>> 0, 12);
  return Buffer.concat([header, data]);
}

function name(dice: Dice): string {
  return dice.pick([EXPORT_NAME, EXPORT_NAME, '', 'nope', '1001/vd', `${EXPORT_NAME}\u00e9`, 'x'.repeat(5000)]);
}

/** One option, well-formed or not. */
function randomOption(dice: Dice): Buffer {
  const infos = Array.from({ length: dice.int(4) }, () => dice.pick([Info.EXPORT, Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE, 77]));
  const queries = Array.from({ length: dice.int(3) }, () => dice.pick(['base:allocation', 'qemu:', 'qemu:dirty-bitmap:since-1', 'base:', 'nocolon', 'x:y']));
  let built = dice.pick<() => Buffer>([
    () => option(Option.LIST, Buffer.alloc(0)),
    () => option(Option.INFO, encodeInfoRequest(name(dice), infos)),
    () => option(Option.GO, encodeInfoRequest(name(dice), infos)),
    () => option(Option.STRUCTURED_REPLY, Buffer.alloc(0)),
    () => option(Option.LIST_META_CONTEXT, encodeMetaContextQuery(name(dice), queries)),
    () => option(Option.SET_META_CONTEXT, encodeMetaContextQuery(name(dice), queries)),
    () => option(Option.STARTTLS, dice.chance(0.5) ? Buffer.alloc(0) : dice.bytes(3)),
    () => option(Option.EXPORT_NAME, Buffer.from(name(dice))),
    () => option(Option.ABORT, Buffer.alloc(0)),
    () => option(dice.int(2 ** 32), dice.bytes(dice.int(40))),
    () => option(Option.LIST, Buffer.alloc(0), MAX_OPTION_LENGTH + 1 + dice.int(2 ** 20)),
    () => option(Option.INFO, encodeInfoRequest(EXPORT_NAME), dice.int(64)),
    () => option(Option.LIST, Buffer.alloc(0), 0, BigInt(dice.int(2 ** 31))),
  ])();
  if (dice.chance(0.15)) {
    built = Buffer.from(built);
    built[dice.int(built.length)] ^= 1 << dice.int(8);
  }
  return built;
}

/** One transmission request, served or refused. */
function randomRequest(dice: Dice): Buffer {
  const offset = dice.pick([0, 512, 4096, EXPORT_SIZE - 512, EXPORT_SIZE, EXPORT_SIZE + 1, dice.int(EXPORT_SIZE), 2 ** 53 + 2 ** 40]);
  const length = dice.pick([0, 1, 512, 4096, 65536, dice.int(2 ** 20), MAX_PAYLOAD, MAX_PAYLOAD + 1, 2 ** 32 - 1]);
  const type = dice.pick([Command.READ, Command.READ, Command.READ, Command.CACHE, Command.BLOCK_STATUS, Command.FLUSH,
    Command.TRIM, Command.WRITE, Command.WRITE_ZEROES, Command.DISC, 99]);
  const flags = dice.chance(0.8) ? 0 : dice.int(2 ** 16);
  const payload = type === Command.WRITE ? dice.bytes(Math.min(length, dice.int(2048))) : undefined;
  const request = encodeRequest({ type, flags, cookie: BigInt(dice.int(2 ** 31)), offset: BigInt(offset), length: Math.min(length, 2 ** 32 - 1), payload });
  if (dice.chance(0.05)) request.writeUInt32BE(REQUEST_MAGIC ^ 1, 0);
  return request;
}

/** The bytes of a plaintext session: flags, options, maybe a GO and requests, maybe cut short. */
function plainScript(dice: Dice): Buffer {
  const parts: Buffer[] = [];
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(dice.chance(0.9) ? 3 : dice.int(2 ** 32), 0);
  parts.push(flags);
  for (let i = dice.int(6); i > 0; i--) parts.push(randomOption(dice));
  if (dice.chance(0.6)) {
    if (dice.chance(0.5)) parts.push(option(Option.STRUCTURED_REPLY, Buffer.alloc(0)));
    parts.push(option(Option.GO, encodeInfoRequest(EXPORT_NAME, dice.chance(0.5) ? [Info.BLOCK_SIZE] : [])));
    for (let i = dice.int(12); i > 0; i--) parts.push(randomRequest(dice));
  }
  let script = Buffer.concat(parts);
  if (dice.chance(0.2)) script = script.subarray(0, dice.int(script.length + 1));
  return script;
}

/** Writes `script` in random pieces, as a network might deliver it. */
async function sendInPieces(client: RawClient, dice: Dice, script: Buffer): Promise<void> {
  for (let at = 0; at < script.length && !client.isClosed;) {
    const piece = dice.chance(0.7) ? script.length - at : 1 + dice.int(Math.min(64, script.length - at));
    client.write(script.subarray(at, at + piece));
    at += piece;
    if (dice.chance(0.1)) await new Promise((resolve) => setImmediate(resolve));
  }
}

interface Outcome { reachedData: boolean }

describe('NBD fuzzer', { timeout: 600_000 }, () => {
  let fixture: Fixture;
  let plain: Running;
  let secure: Running;
  let records: LogRecord[];

  before(async () => {
    fixture = makeFixture();
    const logger = captureLogger();
    // Only what matters here: debug records of 2000 sessions would be most of the test's memory.
    logger.log.level('warn');
    records = logger.records;
    // An idle timeout, so that a client that stops after attaching is closed too (off by default: kernel clients idle for days).
    const settings = { log: logger.log, maxConnections: 64, maxHandshakes: 64, handshakeTimeoutMs: 1000, stallTimeoutMs: 1000, idleTimeoutMs: 2000 };
    plain = await startServer(fixture, { ...settings, tls: { mode: 'off' } });
    secure = await startServer(fixture, settings);
  });

  after(async () => {
    await plain.server.close();
    await secure.server.close();
    removeFixture(fixture);
  });

  async function tlsSession(dice: Dice): Promise<void> {
    const client = await RawClient.connect(secure.port);
    try {
      await client.start();
      const misuse = dice.int(4);
      if (misuse < 2) for (let i = dice.int(3); i > 0; i--) client.write(randomOption(dice));
      if (misuse === 0) {
        // STARTTLS with bytes behind it, before its reply.
        client.write(Buffer.concat([option(Option.STARTTLS, Buffer.alloc(0)), dice.bytes(1 + dice.int(64))]));
      } else if (misuse === 1) {
        // STARTTLS acknowledged, then plaintext where TLS should start.
        client.write(option(Option.STARTTLS, Buffer.alloc(0)));
        client.write(plainScript(dice));
      } else {
        await client.startTls(fixture.certs).catch(() => undefined);
        if (!client.isClosed) await sendInPieces(client, dice, Buffer.concat([option(Option.STARTTLS, Buffer.alloc(0)), plainScript(dice).subarray(4)]));
      }
      client.socket.end();
      await client.untilClosed();
    } finally {
      client.destroy();
    }
  }

  async function plainSession(dice: Dice): Promise<Outcome> {
    const client = await RawClient.connect(plain.port);
    try {
      await client.readGreeting();
      await sendInPieces(client, dice, plainScript(dice));
      // Most clients say goodbye; the rest just stop, and the server's deadlines must end them.
      if (dice.chance(0.9)) client.socket.end();
      const received = await client.untilClosed();
      return { reachedData: received.includes(Buffer.from('67446698', 'hex')) || received.includes(Buffer.from('668e33ef', 'hex')) };
    } finally {
      client.destroy();
    }
  }

  it(`survives ${SESSIONS} hostile sessions from seed 0x${SEED.toString(16)}`, async (t) => {
    const fdsBefore = fs.readdirSync('/proc/self/fd').length;
    const random = seeded(SEED);
    let next = 0;
    let reachedData = 0;
    let overTls = 0;
    const hung: number[] = [];
    const worker = async (): Promise<void> => {
      while (next < SESSIONS) {
        const index = next++;
        const dice = new Dice(seeded(Math.floor(random() * 2 ** 32)));
        const session = index % TLS_EVERY === 0 ? tlsSession(dice).then(() => ({ reachedData: false })) : plainSession(dice);
        if (index % TLS_EVERY === 0) overTls++;
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<'hung'>((resolve) => { timer = setTimeout(() => resolve('hung'), SESSION_TIMEOUT_MS); });
        const outcome = await Promise.race([session.catch(() => ({ reachedData: false })), timedOut]);
        clearTimeout(timer);
        if (outcome === 'hung') hung.push(index);
        else if (outcome.reachedData) reachedData++;
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    t.diagnostic(`${SESSIONS} sessions, ${overTls} over TLS, ${reachedData} got transmission replies, ${hung.length} hung`);
    assert.deepEqual(hung, [], 'sessions that did not end');

    await waitFor(() => plain.server.connectionCount === 0 && secure.server.connectionCount === 0, 'every connection to close', 30_000);
    await waitFor(() => fixture.registry.openReaders === 0, 'every reader to close', 30_000);
    await waitFor(() => fs.readdirSync('/proc/self/fd').length <= fdsBefore, 'descriptors back to where they were', 30_000);
    const failures = records.filter((record) => record.level >= 50);
    assert.deepEqual(failures.map((record) => record.msg), [], 'no connection failed with an unexpected error');

    for (const server of [plain, secure]) {
      const client = await connectReady(server.port, { tls: server === secure ? fixture.certs : null });
      client.sendRequest({ type: Command.READ, cookie: 1n, offset: 4096, length: 65536 });
      assert.equal((await client.readSimpleReply()).error, 0);
      assert.ok((await client.read(65536)).equals(fixture.image.subarray(4096, 4096 + 65536)), 'a good client reads the right bytes');
      client.destroy();
    }
  });
});

// The read-rate limits as the clients of both doors see them: HTTPS downloads and NBD reads of the
// same image, through the real servers, with the limits on a fake clock that only the test moves.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReadLimits, type ReadLimitSettings } from '../../src/doors/limits';
import { Command } from '../../src/nbd/wire';
import { FakeAgentService } from '../api/helpers/fake-service';
import { startServer as startApi, type Response, type TestServer } from '../api/helpers/server';
import {
  captureLogger, connectReady, EXPORT_SIZE, makeFixture, MiB, removeFixture, startServer as startNbd, waitFor,
  type Fixture, type LogRecord, type Running,
} from '../nbd/helpers/server';
import type { RawClient } from '../nbd/helpers/raw-client';
import { FakeClock } from '../doors/fake-clock';

const KiB = 1024;
const options = { timeout: 60_000 };
const WARN_LEVEL = 40;

let fixture: Fixture;
let service: FakeAgentService;
let snapshotId: string;

before(async () => {
  fixture = makeFixture();
  service = new FakeAgentService([{ name: 'vda', file: fixture.imageFile, size: EXPORT_SIZE, tracked: true, mapped: true }]);
  snapshotId = (await service.createSnapshot(['vda'])).id;
});

after(() => removeFixture(fixture));

interface Doors {
  clock: FakeClock;
  limits: ReadLimits;
  api: TestServer;
  nbd: Running;
  records: LogRecord[];
  close(): Promise<void>;
}

/** Both servers over the same image, with one set of limits on a fake clock. */
async function openDoors(settings: ReadLimitSettings): Promise<Doors> {
  const clock = new FakeClock();
  const limits = new ReadLimits(settings, clock);
  const { log, records } = captureLogger();
  const api = await startApi({ service, log, consume: { limits } });
  const nbd = await startNbd(fixture, { limits, log });
  return {
    clock, limits, api, nbd, records,
    close: async () => {
      await api.close();
      await nbd.server.close();
    },
  };
}

const consumePath = (): string => `/api/v1/snapshots/${snapshotId}/consume/vda`;

function download(doors: Doors, range?: { start: number; end: number }, agent?: https.Agent): Promise<Response> {
  const headers: Record<string, string> = range === undefined ? {} : { Range: `bytes=${range.start}-${range.end}` };
  return doors.api.request(consumePath(), { headers, ...(agent === undefined ? {} : { agent }) });
}

async function nbdRead(client: RawClient, offset: number, length: number): Promise<Buffer> {
  client.sendRequest({ type: Command.READ, offset, length, cookie: BigInt(offset + 1) });
  const reply = await client.readSimpleReply();
  assert.equal(reply.error, 0);
  return client.read(length);
}

/** Runs the fake clock's timers, one at a time with a pause for I/O between them, until `work` settles. */
async function drive<T>(clock: FakeClock, work: Promise<T>): Promise<T> {
  let settled = false;
  const result = work.finally(() => { settled = true; });
  while (!settled) {
    await sleep(2);
    clock.runNext();
  }
  return result;
}

/** Whether `promise` settled within a few turns of the event loop: used only where it must not have. */
async function settledSoon(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  promise.then(() => { settled = true; }, () => { settled = true; });
  await sleep(50);
  return settled;
}

describe('read-rate limits at the doors', () => {
  test('a limited HTTP download delivers every byte, no faster than the limit', options, async () => {
    const doors = await openDoors({ readBytesPerSecond: 4 * MiB, connectionReadBytesPerSecond: null });
    try {
      const response = await drive(doors.clock, download(doors));
      assert.equal(response.status, 200);
      assert.ok(response.body.equals(fixture.image), 'the whole image, byte for byte');
      // 8 MiB at 4 MiB/s, less the 1 MiB burst and one 1 MiB read into debt: at least 1.5 s of (fake) time.
      assert.ok(doors.clock.now() >= 1500, `took ${doors.clock.now()} ms of clock time`);
    } finally {
      await doors.close();
    }
  });

  test('an NBD read larger than the budget\'s burst is served, and the next read pays for it', options, async () => {
    const doors = await openDoors({ readBytesPerSecond: MiB, connectionReadBytesPerSecond: null });
    const client = await connectReady(doors.nbd.port, { tls: fixture.certs });
    try {
      const whole = await nbdRead(client, 0, EXPORT_SIZE);
      assert.ok(whole.equals(fixture.image), 'the 8 MiB read went through with the clock stopped');
      const next = nbdRead(client, 4 * KiB, 4 * KiB);
      await waitFor(() => doors.limits.waiting === 1, 'the next read to wait');
      doors.clock.advance(6999);
      assert.equal(doors.limits.waiting, 1, 'a debt of 7 MiB takes 7 s to pay');
      doors.clock.advance(1);
      assert.ok((await next).equals(fixture.image.subarray(4 * KiB, 8 * KiB)));
    } finally {
      client.destroy();
      await doors.close();
    }
  });

  test('HTTP downloads and NBD reads draw on one budget', options, async () => {
    const doors = await openDoors({ readBytesPerSecond: MiB, connectionReadBytesPerSecond: null });
    const client = await connectReady(doors.nbd.port, { tls: fixture.certs });
    try {
      const first = await download(doors, { start: 0, end: 2 * MiB - 1 });
      assert.ok(first.body.equals(fixture.image.subarray(0, 2 * MiB)), 'the burst and 1 MiB of debt, over HTTP');
      const read = nbdRead(client, MiB, 64 * KiB);
      await waitFor(() => doors.limits.waiting === 1, 'the NBD read to wait');
      assert.equal(await settledSoon(read), false, 'no NBD reply while the budget is in debt');
      doors.clock.advance(999);
      assert.equal(doors.limits.waiting, 1, 'the debt is 1 MiB at 1 MiB/s');
      doors.clock.advance(1);
      assert.ok((await read).equals(fixture.image.subarray(MiB, MiB + 64 * KiB)));
    } finally {
      client.destroy();
      await doors.close();
    }
  });

  test('a per-connection limit applies to each connection, not to each request', options, async () => {
    const doors = await openDoors({ readBytesPerSecond: null, connectionReadBytesPerSecond: MiB });
    const nbdClients = [await connectReady(doors.nbd.port, { tls: fixture.certs }), await connectReady(doors.nbd.port, { tls: fixture.certs })];
    const keepAlive = new https.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      // With the clock stopped, every new connection still gets its own burst...
      const range = { start: 0, end: 2 * MiB - 1 };
      const [one, two] = await Promise.all([download(doors, range, keepAlive), download(doors, range)]);
      assert.ok(one.body.equals(fixture.image.subarray(0, 2 * MiB)) && two.body.equals(one.body));
      for (const client of nbdClients) assert.ok((await nbdRead(client, MiB, 2 * MiB)).equals(fixture.image.subarray(MiB, 3 * MiB)));
      // ...but the next request on a connection that spent its own waits for the clock.
      const again = download(doors, { start: 2 * MiB, end: 2 * MiB + 64 * KiB - 1 }, keepAlive);
      await waitFor(() => doors.limits.waiting === 1, 'the second request on the connection to wait');
      doors.clock.advance(1000);
      assert.ok((await again).body.equals(fixture.image.subarray(2 * MiB, 2 * MiB + 64 * KiB)));
    } finally {
      keepAlive.destroy();
      for (const client of nbdClients) client.destroy();
      await doors.close();
    }
  });

  test('a client that leaves while its reads wait is dropped quietly, and charged nothing', options, async () => {
    const doors = await openDoors({ readBytesPerSecond: MiB, connectionReadBytesPerSecond: null });
    try {
      await download(doors, { start: 0, end: 2 * MiB - 1 });
      // An HTTP download whose first read waits, so no header has gone out yet.
      const request = https.get({
        host: '127.0.0.1', servername: 'localhost', port: doors.api.port, path: consumePath(), agent: false,
        ca: doors.api.ca, cert: fs.readFileSync(doors.api.certs.clientCert), key: fs.readFileSync(doors.api.certs.clientKey),
      });
      request.on('error', () => {});
      await waitFor(() => doors.limits.waiting >= 1, 'the download to wait');
      request.destroy();
      // An NBD client with reads queued does the same (apart, so that they are not merged).
      const client = await connectReady(doors.nbd.port, { tls: fixture.certs });
      client.sendRequests([0, 1, 2, 3].map((i) => ({ type: Command.READ, offset: i * 2 * MiB, length: MiB, cookie: BigInt(i + 1) })));
      await waitFor(() => doors.limits.waiting >= 4, 'the NBD reads to wait');
      client.destroy();
      await waitFor(() => doors.limits.waiting === 0 && service.openReaders === 0 && fixture.registry.openReaders === 0,
        'the waiting reads to be dropped and the readers closed');
      const bad = doors.records.filter((record) => record.level >= WARN_LEVEL);
      assert.deepEqual(bad.map((record) => record.msg), [], 'a client leaving is neither an error nor a warning');
      // Nothing was charged for the dropped reads: the next read waits only for the first download's debt.
      const read = download(doors, { start: 0, end: 64 * KiB - 1 });
      await waitFor(() => doors.limits.waiting === 1, 'the next download to wait');
      doors.clock.advance(999);
      await sleep(20);
      assert.equal(doors.limits.waiting, 1);
      doors.clock.advance(1);
      assert.ok((await read).body.equals(fixture.image.subarray(0, 64 * KiB)));
    } finally {
      await doors.close();
    }
  });
});

// A consumer reading slowly but steadily is served to the end on both doors, HTTPS Range
// downloads and NBD over TLS, with short stall timeouts so the test runs in seconds: a stall is
// no progress, not bytes still queued.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Command } from '../../src/nbd/wire';
import { FakeAgentService } from '../api/helpers/fake-service';
import { startServer as startApi, type TestServer } from '../api/helpers/server';
import { writePatternImage } from '../nbd/helpers/fake-registry';
import { connectReady, makeFixture, MiB, removeFixture, startServer as startNbd, type Fixture, type Running } from '../nbd/helpers/server';

const SIZE = 16 * MiB;
const STALL_TIMEOUT_MS = 1500;
/** The whole image takes over twice the stall timeout; the kernel takes more of it well within one. */
const RATE = 3 * MiB;

/** GETs `route` and reads the body at `bytesPerSecond`, steadily. */
function slowGet(server: TestServer, route: string, bytesPerSecond: number): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const request = https.get({
      host: '127.0.0.1', servername: 'localhost', port: server.port, path: route, ca: server.ca, agent: false,
      cert: fs.readFileSync(server.certs.clientCert), key: fs.readFileSync(server.certs.clientKey),
    }, (response) => {
      const chunks: Buffer[] = [];
      const started = Date.now();
      let taken = 0;
      response.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        taken += chunk.length;
        const wait = started + (taken / bytesPerSecond) * 1000 - Date.now();
        if (wait > 0) {
          response.pause();
          setTimeout(() => response.resume(), wait);
        }
      });
      response.on('end', () => resolve({ status: response.statusCode!, body: Buffer.concat(chunks) }));
      response.on('error', reject);
      response.on('aborted', () => reject(new Error(`the server cut the download at ${taken} bytes`)));
    });
    request.on('error', reject);
  });
}

describe('slow readers on both doors', { timeout: 120_000 }, () => {
  let fixture: Fixture;
  let image: Buffer;
  let api: TestServer;
  let nbd: Running;
  let snapshotId: string;
  const NAME = '6000/vda';

  before(async () => {
    fixture = makeFixture();
    const file = path.join(fixture.dir, 'slow.raw');
    image = writePatternImage(file, SIZE, 11);
    fixture.registry.add({ name: NAME, file });
    nbd = await startNbd(fixture, { stallTimeoutMs: STALL_TIMEOUT_MS });
    const service = new FakeAgentService([{ name: 'vda', file, size: SIZE, tracked: true, mapped: true }]);
    snapshotId = (await service.createSnapshot(['vda'])).id;
    api = await startApi({ service, timeouts: { idleSocketMs: STALL_TIMEOUT_MS } });
  });

  after(async () => {
    await api.close();
    await nbd.server.close();
    removeFixture(fixture);
  });

  it('HTTPS serves the whole image to a slow, steady reader', async () => {
    const { status, body } = await slowGet(api, `/api/v1/snapshots/${snapshotId}/consume/vda`, RATE);
    assert.equal(status, 200);
    assert.ok(body.equals(image), 'the download is the image');
  });

  it('NBD over TLS serves the whole image, in one reply, to a slow, steady reader', async () => {
    const client = await connectReady(nbd.port, { tls: fixture.certs, exportName: NAME });
    try {
      client.throttle(RATE);
      client.sendRequest({ type: Command.READ, cookie: 1n, offset: 0, length: SIZE });
      assert.equal((await client.readSimpleReply()).error, 0);
      assert.ok((await client.read(SIZE)).equals(image), 'the reply is the image');
    } finally {
      client.destroy();
    }
  });
});


// Clients that never authenticate: they must not grow the server's memory nor keep an
// authenticated client from its greeting and its data. The server runs in a child process so
// that its memory is its own.
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Command, Option, OPTION_MAGIC } from '../../src/nbd/wire';
import type { TestCerts } from '../helpers/certs';
import type { FloodServerReady, FloodServerSettings, FloodServerStats } from './helpers/flood-server';
import { RawClient } from './helpers/raw-client';
import { connectReady, MiB } from './helpers/server';

const HOSTILE_CLIENTS = 60;
/** Options each hostile client sends at once, never reading a reply: 1 MiB of NBD_OPT_LIST. */
const OPTIONS_EACH = 65536;
/** Far more than the server needs for its clients, far less than what unread replies would take. */
const RSS_GROWTH_BOUND = 64 * MiB;

function listOptions(count: number): Buffer {
  const option = Buffer.alloc(16);
  option.writeBigUInt64BE(OPTION_MAGIC, 0);
  option.writeUInt32BE(Option.LIST, 8);
  return Buffer.concat(Array.from({ length: count }, () => option));
}

describe('NBD clients that never authenticate', { timeout: 60_000 }, () => {
  let child: ChildProcess;
  let ready: FloodServerReady;
  let certs: TestCerts;

  before(async () => {
    // Slots and deadline out of the way: only the bound on unread replies can close the attackers.
    const settings: FloodServerSettings = { maxConnections: 2 * HOSTILE_CLIENTS, maxHandshakes: 2 * HOSTILE_CLIENTS, handshakeTimeoutMs: 600_000 };
    child = fork(path.join(__dirname, 'helpers', 'flood-server.js'), [JSON.stringify(settings)], { execArgv: ['--expose-gc'] });
    [ready] = await once(child, 'message') as [FloodServerReady];
    const dir = path.join(ready.dir, 'certs');
    const file = (name: string): string => path.join(dir, name);
    certs = { dir, caCert: file('ca-cert.pem'), caKey: file('ca-key.pem'), serverCert: file('server-cert.pem'),
      serverKey: file('server-key.pem'), clientCert: file('client-cert.pem'), clientKey: file('client-key.pem') };
  });

  after(async () => {
    child.disconnect();
    await once(child, 'exit');
  });

  async function stats(message: 'stats' | 'reset' = 'stats'): Promise<FloodServerStats> {
    const answer = once(child, 'message') as Promise<[FloodServerStats]>;
    child.send(message);
    return (await answer)[0];
  }

  it('are closed after a few options, while a real client gets its greeting and data, and RSS stays bounded', async () => {
    const baseline = await stats('reset');
    const options = listOptions(OPTIONS_EACH);
    const hostile = await Promise.all(Array.from({ length: HOSTILE_CLIENTS }, async () => {
      const client = await RawClient.connect(ready.port);
      client.stopReading();
      client.sendClientFlags();
      client.write(options);
      return client;
    }));

    const real = await connectReady(ready.port, { tls: certs });
    real.sendRequest({ type: Command.READ, cookie: 1n, offset: MiB, length: MiB });
    assert.equal((await real.readSimpleReply()).error, 0);
    const image = fs.readFileSync(ready.imageFile);
    assert.ok((await real.read(MiB)).equals(image.subarray(MiB, 2 * MiB)), 'the real client reads the right bytes');

    // The test's timeout bounds this: without the bound they stay until the (far) handshake deadline.
    let last = await stats();
    while (last.connections > 1) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      last = await stats();
    }
    const growth = last.peakRss - baseline.rss;
    assert.ok(growth < RSS_GROWTH_BOUND, `RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
    for (const client of [...hostile, real]) client.destroy();
  });
});

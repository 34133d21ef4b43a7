// A whole agent on the simulated engine: an NBD client reading a snapshot whose snapstore
// overflows gets the snapshot's true bytes until then, EIO or ESHUTDOWN after, never other
// bytes and never a hang.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Command, NbdError } from '../../src/nbd/wire';
import { startE2eAgent } from '../e2e/helpers';
import type { TestCerts } from '../helpers/certs';
import { connectReady, MiB } from './helpers/server';

const DISK_SIZE = 64 * MiB;

test('an NBD reader of a snapshot that overflows gets its bytes, then EIO or ESHUTDOWN', { timeout: 60_000 }, async (t) => {
  const e2e = await startE2eAgent({ disks: 1, diskSize: DISK_SIZE });
  t.after(() => e2e.stop());
  const disk = e2e.disks[0];
  const atSnapshot = fs.readFileSync(disk);
  const { snapshot_id: snapshotId } = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  const file = (name: string): string => path.join(e2e.certs, name);
  const certs = { dir: e2e.certs, caCert: file('ca-cert.pem'), clientCert: file('client-cert.pem'), clientKey: file('client-key.pem') } as TestCerts;
  const client = await connectReady(Number(new URL(e2e.agent.nbdUrl).port), { tls: certs, exportName: `${snapshotId}/disk0` });
  t.after(() => client.destroy());

  /** One read: its bytes, or the error the server answered. */
  async function read(offset: number): Promise<Buffer | number> {
    client.sendRequest({ type: Command.READ, cookie: BigInt(offset), offset, length: MiB });
    const reply = await client.readSimpleReply();
    assert.equal(reply.cookie, BigInt(offset));
    return reply.error === 0 ? client.read(MiB) : reply.error;
  }

  const first = await read(0);
  assert.ok(first instanceof Buffer && first.equals(atSnapshot.subarray(0, MiB)));

  // Far more copy-on-write at once than the snapstore holds: it overflows before it can grow.
  const fd = fs.openSync(disk, 'r+');
  fs.writeSync(fd, crypto.randomBytes(DISK_SIZE - 8 * MiB), 0, DISK_SIZE - 8 * MiB, 4 * MiB);
  fs.fsyncSync(fd);
  fs.closeSync(fd);

  // Until the failure shows, every read is the snapshot's; after it, every read is an error.
  let failedWith: number | null = null;
  for (let pass = 0; failedWith === null || pass < 2; pass++) {
    for (let offset = 0; offset < DISK_SIZE; offset += MiB) {
      const result = await read(offset);
      if (typeof result === 'number') {
        assert.ok(result === NbdError.EIO || result === NbdError.ESHUTDOWN, `error ${result}`);
        failedWith = result;
      } else {
        assert.equal(failedWith, null, `bytes at ${offset} after the snapshot failed`);
        assert.ok(result.equals(atSnapshot.subarray(offset, offset + MiB)), `the snapshot's bytes at ${offset}`);
      }
    }
  }
  const snapshot = await e2e.json<{ status?: string }>('GET', `/snapshots/${snapshotId}`);
  assert.notEqual(JSON.stringify(snapshot).match(/fail|overflow|error/i), null, 'the API says it failed too');
});

// The [limits] of the config, as a whole agent applies them: the reader threads' I/O priority, and
// one read budget that both doors draw on.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { readerThreadIds } from '../../src/native/reader';
import { Command } from '../../src/nbd/wire';
import type { TestCerts } from '../helpers/certs';
import { startE2eAgent } from '../e2e/helpers';
import { connectReady, waitFor } from '../nbd/helpers/server';

const MiB = 1024 * 1024;
const run = promisify(execFile);

test('the agent runs its reader threads at the configured priority, and both doors wait for the configured rate', { timeout: 120_000 }, async (t) => {
  const e2e = await startE2eAgent({
    disks: 1,
    diskSize: 16 * MiB,
    configure: (config) => {
      config.limits = { readBytesPerSecond: MiB, connectionReadBytesPerSecond: null, ioPriority: 'best-effort-low' };
    },
  });
  t.after(() => e2e.stop());
  const { limits } = e2e.agent;

  const priorities = await Promise.all(readerThreadIds().map(async (id) => (await run('ionice', ['-p', String(id)])).stdout.trim()));
  assert.ok(priorities.length > 0);
  assert.deepEqual(new Set(priorities), new Set(['best-effort: prio 7']));

  const { snapshot_id: snapshotId } = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  // A whole-disk download is 16 times the budget's burst: its reads soon wait.
  const { port, pathname } = new URL(e2e.agent.apiUrl);
  const read = (name: string): Buffer => fs.readFileSync(path.join(e2e.certs, name));
  const download = https.get({
    host: '127.0.0.1', servername: 'localhost', port: Number(port), path: `${pathname}/snapshots/${snapshotId}/consume/disk0`,
    ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem'), agent: false,
  }, (response) => response.resume());
  download.on('error', () => {});
  await waitFor(() => limits.waiting > 0, 'the HTTP download to wait for the budget', 60_000);
  download.destroy();
  await waitFor(() => limits.waiting === 0, 'the download\'s reads to be withdrawn', 60_000);

  // An NBD client draws on the same budget: its second large read waits.
  const certs: TestCerts = {
    dir: e2e.certs, caCert: path.join(e2e.certs, 'ca-cert.pem'), caKey: '', serverCert: '', serverKey: '',
    clientCert: path.join(e2e.certs, 'client-cert.pem'), clientKey: path.join(e2e.certs, 'client-key.pem'),
  };
  const client = await connectReady(Number(new URL(e2e.agent.nbdUrl).port), { tls: certs, exportName: `${snapshotId}/disk0` });
  t.after(() => client.destroy());
  client.sendRequests([0, 1].map((i) => ({ type: Command.READ, offset: i * 8 * MiB, length: 4 * MiB, cookie: BigInt(i + 1) })));
  await waitFor(() => limits.waiting > 0, 'an NBD read to wait for the budget', 60_000);
});

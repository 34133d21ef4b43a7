// Without io_priority the agent leaves the reader threads at the priority the process was given
// (systemd's IOSchedulingClass, ionice): they inherit it from the thread that starts them.
// A file of its own: the reader threads are per process, and must be started here.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { readerThreadIds } from '../../src/native/reader';
import { startE2eAgent } from '../e2e/helpers';

const MiB = 1024 * 1024;
const run = promisify(execFile);

test('without io_priority, the reader threads keep the priority the agent was started with', { timeout: 120_000 }, async (t) => {
  // What `ionice -c 3 coriolis-snapshot-agent serve` gives the main thread.
  await run('ionice', ['-c', '3', '-p', String(process.pid)]);
  const e2e = await startE2eAgent({ disks: 1, diskSize: 4 * MiB });
  t.after(() => e2e.stop());
  assert.equal(e2e.agent.limits.limited, false);
  const { snapshot_id: snapshotId } = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  const image = await e2e.request('GET', `/snapshots/${snapshotId}/consume/disk0`);
  assert.equal(image.body.length, 4 * MiB);
  const ids = readerThreadIds();
  assert.ok(ids.length > 0);
  const priorities = await Promise.all(ids.map(async (id) => (await run('ionice', ['-p', String(id)])).stdout.trim()));
  assert.deepEqual(new Set(priorities), new Set(['idle']));
});

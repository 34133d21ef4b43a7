// The Coriolis client's flow against a whole agent: full copy of a snapshot in 10 MiB ranges,
// then an incremental copy of only the changed ranges, reassembled and compared byte for byte.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { startE2eAgent } from './helpers';

const MiB = 1024 * 1024;
const CHUNK = 10 * MiB;

interface Range { start_offset: number; length: number }
interface Changes { backup_type: string; cbt_block_size_bytes: number; ranges: Range[] }
interface Snapshot {
  snapshot_id: string;
  volume_snapshots: Array<{ snapshot_number: number; generation_id: string; original_device: { tracking_id: string } }>;
}

test('full, then incremental: the reassembled copy equals the second snapshot', async (t) => {
  const e2e = await startE2eAgent();
  t.after(() => e2e.stop());
  const disks = await e2e.json<Array<{ id?: string; path: string }>>('GET', '/disks/');
  assert.deepEqual(disks.map((d) => d.id), ['disk0', 'disk1']);

  /** Copies `ranges` of the image into `target`, 10 MiB per request, as the client does. */
  async function copy(snapshotId: string, ranges: Range[], target: Buffer): Promise<number> {
    let requests = 0;
    for (const range of ranges) {
      for (let offset = range.start_offset; offset < range.start_offset + range.length; offset += CHUNK) {
        const end = Math.min(offset + CHUNK, range.start_offset + range.length) - 1;
        const res = await e2e.request('GET', `/snapshots/${snapshotId}/consume/disk0`, { headers: { range: `bytes=${offset}-${end}` } });
        assert.equal(res.status, 206);
        assert.equal(res.headers['content-range'], `bytes ${offset}-${end}/${target.length}`);
        res.body.copy(target, offset);
        requests++;
      }
    }
    return requests;
  }

  const first = await e2e.json<Snapshot>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  const full = await e2e.json<Changes>('GET', `/snapshots/${first.snapshot_id}/changes/disk0/`);
  assert.equal(full.backup_type, 'full');
  const size = fs.statSync(e2e.disks[0]).size;
  assert.deepEqual(full.ranges, [{ start_offset: 0, length: size }]);
  const replica = Buffer.alloc(size);
  assert.equal(await copy(first.snapshot_id, full.ranges, replica), Math.ceil(size / CHUNK));
  const atFirst = fs.readFileSync(e2e.disks[0]);
  assert.ok(replica.equals(atFirst), 'the full copy is the disk at snapshot time');
  const { generation_id: generation, snapshot_number: number } = first.volume_snapshots[0];
  await e2e.json('DELETE', `/snapshots/${first.snapshot_id}`);

  // The machine keeps working: a few writes, one of them in block 0.
  const fd = fs.openSync(e2e.disks[0], 'r+');
  fs.writeSync(fd, Buffer.from('new boot code'), 0, 13, 100);
  fs.writeSync(fd, Buffer.alloc(3 * MiB, 0x42), 0, 3 * MiB, 40 * MiB + 12345);
  fs.fsyncSync(fd);
  fs.closeSync(fd);

  const second = await e2e.json<Snapshot>('POST', '/snapshots/', { tracked_disk_ids: ['disk0'] });
  const changes = await e2e.json<Changes>('GET',
    `/snapshots/${second.snapshot_id}/changes/disk0/?previousGenerationID=${generation}&previousNumber=${number}`);
  assert.equal(changes.backup_type, 'incremental');
  const changed = changes.ranges.reduce((sum, r) => sum + r.length, 0);
  assert.ok(changed >= 3 * MiB && changed <= 4 * MiB + changes.cbt_block_size_bytes, `only the changes travel: ${changed} bytes`);
  assert.equal(changes.ranges[0].start_offset, 0, 'block 0 is part of the changes');
  await copy(second.snapshot_id, changes.ranges, replica);
  const image = await e2e.request('GET', `/snapshots/${second.snapshot_id}/consume/disk0`);
  assert.equal(image.status, 200);
  assert.ok(replica.equals(image.body), 'the reassembled copy equals the second image');
  assert.ok(replica.equals(fs.readFileSync(e2e.disks[0])), 'and the disk, which nobody wrote since');
  await e2e.json('DELETE', `/snapshots/${second.snapshot_id}/`);
  assert.deepEqual(await e2e.json('GET', '/snapshots/'), []);
});

// A whole agent: a digest pass or a zero-marking changes query over an export makes NBD's
// base:allocation report its zero blocks (NBD_STATE_ZERO), as real clients see them (nbdinfo
// --map, nbdcopy), and reads of the export still return the disk's bytes.
// Debian packages: libnbd-bin.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { findCommand } from '../native/helpers/loop';
import { run } from '../nbd/helpers/server';
import { startE2eAgent, type E2eAgent } from './helpers';

const MiB = 1024 * 1024;
const missing = ['nbdinfo', 'nbdcopy'].filter((command) => findCommand(command) === undefined);
const skip = missing.length > 0 ? `not installed: ${missing.join(', ')} (Debian package libnbd-bin)` : false;

interface MapExtent {
  offset: number;
  length: number;
  type: number;
}

/** base:allocation as it must read once every `blockSize` block of `disk` was looked at: 2 (zero) or 0 (data), merged. */
function expectedMap(disk: Buffer, blockSize: number, upTo = disk.length): MapExtent[] {
  const extents: MapExtent[] = [];
  for (let offset = 0; offset < disk.length; offset += blockSize) {
    const length = Math.min(blockSize, disk.length - offset);
    const type = offset < upTo && disk.subarray(offset, offset + length).every((byte) => byte === 0) ? 2 : 0;
    const last = extents.at(-1);
    if (last !== undefined && last.type === type) last.length += length;
    else extents.push({ offset, length, type });
  }
  return extents;
}

describe('NBD zero extents after passes over the image', { skip, timeout: 120_000 }, () => {
  let e2e: E2eAgent;
  let disk: Buffer;
  let uri: (disk: string) => string;
  let snapshotId: string;

  before(async () => {
    e2e = await startE2eAgent({ disks: 2, diskSize: 64 * MiB });
    disk = fs.readFileSync(e2e.disks[0]);
    const snapshot = await e2e.json<{ snapshot_id: string }>('POST', '/snapshots/', { tracked_disk_ids: ['disk0', 'disk1'] });
    snapshotId = snapshot.snapshot_id;
    uri = (name) => `${e2e.agent.nbdUrl}/${encodeURIComponent(`${snapshotId}/${name}`)}?tls-certificates=${e2e.certs}`;
  });
  after(() => e2e.stop());

  async function map(name: string): Promise<MapExtent[]> {
    const result = await run('nbdinfo', ['--map', '--json', uri(name)]);
    assert.equal(result.code, 0, result.stderr);
    return (JSON.parse(result.stdout) as MapExtent[]).map(({ offset, length, type }) => ({ offset, length, type }));
  }

  test('all data before any pass; the zero blocks a digest pass found afterwards; reads unchanged', async () => {
    assert.deepEqual(await map('disk0'), [{ offset: 0, length: disk.length, type: 0 }]);
    // A window: only what the pass looked at becomes known.
    const window = await e2e.request('GET', `/snapshots/${snapshotId}/digests/disk0?block_size=1048576&length=${32 * MiB}`);
    assert.equal(window.status, 200);
    assert.deepEqual(await map('disk0'), expectedMap(disk, MiB, 32 * MiB));
    const whole = await e2e.request('GET', `/snapshots/${snapshotId}/digests/disk0?block_size=1048576`);
    assert.equal(whole.status, 200);
    const extents = await map('disk0');
    assert.deepEqual(extents, expectedMap(disk, MiB));
    assert.ok(extents.some((extent) => extent.type === 2) && extents.some((extent) => extent.type === 0), 'both kinds');

    // nbdcopy skips what is reported zero, and reads everything with --no-extents: both copies are the disk.
    for (const extra of [[], ['--no-extents']]) {
      const target = path.join(e2e.dir, 'copy.raw');
      fs.rmSync(target, { force: true });
      const copied = await run('nbdcopy', [...extra, uri('disk0'), target]);
      assert.equal(copied.code, 0, copied.stderr);
      assert.ok(fs.readFileSync(target).equals(disk), `nbdcopy ${extra.join(' ')} copies the disk`);
    }
  });

  test('a zero-marking changes query teaches the export as well, at CBT block granularity', async () => {
    const other = fs.readFileSync(e2e.disks[1]);
    assert.deepEqual(await map('disk1'), [{ offset: 0, length: other.length, type: 0 }]);
    const changes = await e2e.json<{ cbt_block_size_bytes: number; ranges: Array<{ start_offset: number; length: number; zero: boolean }> }>(
      'GET', `/snapshots/${snapshotId}/changes/disk1?markZeroRanges=true`);
    const cbt = changes.cbt_block_size_bytes;
    assert.deepEqual(changes.ranges.map(({ start_offset: offset, length, zero }) => ({ offset, length, type: zero ? 2 : 0 })), expectedMap(other, cbt));
    assert.deepEqual(await map('disk1'), expectedMap(other, cbt));
  });
});

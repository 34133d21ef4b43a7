// What a pull moves over the network in each mode, against the size of the disk, on an agent
// with the simulated engine: a full copy of a disk half full of data, an incremental after a
// small write, and a resync after a generation change (a resize) with a small write.
// Prints, per mode, image bytes and digest bytes received and their ratio to the disk size.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startE2eAgent } from '../test/e2e/helpers';
import { pull } from '../test/pull/helpers';
import type { PullSummary } from '../src/pull/pull';
import { writeDisk } from '../test/snapshots/helpers/env';

const MiB = 1024 * 1024;
const DISK = 256 * MiB;

async function main(): Promise<void> {
  const e2e = await startE2eAgent({ disks: 1, diskSize: DISK });
  try {
    const disk = e2e.disks[0];
    writeDisk(disk, 32 * MiB, crypto.randomBytes(128 * MiB));
    const rows: Array<[string, PullSummary]> = [];
    const options = { blockSize: 4 * MiB, out: path.join(e2e.dir, 'copy.img') };
    rows.push(['full (half the disk zeros)', await pull(e2e, options)]);
    writeDisk(disk, 100 * MiB, crypto.randomBytes(MiB));
    rows.push(['incremental after a 1 MiB write', await pull(e2e, options)]);
    fs.truncateSync(disk, DISK + 16 * MiB);
    writeDisk(disk, 200 * MiB, crypto.randomBytes(MiB));
    rows.push(['resync after a resize + 1 MiB write', await pull(e2e, options)]);
    console.log(`pull: disk ${DISK / MiB} MiB, digest blocks 4 MiB, simulated engine; bytes received / disk size`);
    for (const [name, s] of rows) {
      const moved = s.bytes_fetched + s.digest_bytes;
      console.log(`${name.padEnd(38)} image ${(s.bytes_fetched / MiB).toFixed(1).padStart(7)} MiB  digests ${(s.digest_bytes / 1024).toFixed(1).padStart(6)} KiB  `
        + `ratio ${(moved / s.image_size).toFixed(4)}  zero-skipped ${(s.bytes_zero / MiB).toFixed(1)} MiB  ${s.duration_seconds.toFixed(1)} s`);
    }
  } finally {
    await e2e.stop();
  }
}

void main();

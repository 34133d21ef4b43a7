// What only blksnap needs, on the real module inside the VM (the suites both modules pass are
// conformance.test.ts and lifecycle.test.ts).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { DeviceId } from '../../src/core/devices';
import { queryBlockDevice } from '../../src/native/blockdev';
import { writeDisk } from '../snapshots/helpers/env';
import { moduleEngine, moduleSkipReason } from './modules';
import { guestDisks } from './run';

const skip = moduleSkipReason('blksnap');

// What only blksnap needs: its module keeps one snapshot at a time (a second one would orphan
// the first for good), and a device can only start being tracked while no snapshot lives.
describe('blksnap: one snapshot at a time', { skip, timeout: 600_000 }, () => {
  test('a second snapshot is refused while one lives, the first keeps working, and a device tracked meanwhile is tracked once it is gone', async () => {
    const stateDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-blksnap-one-'));
    const engine = await moduleEngine('blksnap', stateDir);
    const [first, second] = guestDisks().filter((d) => d.role === 'origin').map((d) => {
      const info = queryBlockDevice(d.device);
      return { path: d.device, device: { major: info.major, minor: info.minor } };
    }) as [{ path: string; device: DeviceId }, { path: string; device: DeviceId }];
    const store = queryBlockDevice(guestDisks().find((d) => d.role === 'store')!.device);
    const storage = { major: store.major, minor: store.minor };
    const snapstoreOf = async (device: DeviceId, offset: number) => {
      const snapstore = await engine.createSnapstore({ id: crypto.randomBytes(16).toString('hex'), devices: [device], storage, thresholdBytes: 0 });
      await snapstore.addDeviceRanges([{ offset, length: 16 * 1024 * 1024 }]);
      return snapstore;
    };
    try {
      await engine.stopTracking(second.device).catch(() => undefined);
      const held = await snapstoreOf(first.device, 0);
      const snapshot = await engine.createSnapshot([first.device]);
      const readImage = async (): Promise<Buffer> => {
        const reader = await engine.openImage(snapshot.images[0]);
        try {
          return Buffer.from(await reader.read(0, 4096));
        } finally {
          await reader.close();
        }
      };
      const before = await readImage();

      await engine.startTracking(second.device);
      const waiting = (await engine.listTrackers()).find((t) => t.device.minor === second.device.minor && t.device.major === second.device.major);
      assert.ok(waiting, 'listed at once');
      assert.equal(waiting.snapshotNumber, 0);
      await assert.rejects(engine.startTracking({ major: 4095, minor: 4095 }), { code: 'ENODEV' });

      const other = await snapstoreOf(second.device, 16 * 1024 * 1024);
      await assert.rejects(engine.createSnapshot([second.device]), { code: 'EBUSY' });
      writeDisk(first.path, 0, Buffer.alloc(4096, 0x5a));
      assert.ok((await readImage()).equals(before), 'the first snapshot still serves its own data');
      assert.deepEqual(await engine.snapshotHealth(first.device), { ok: true });

      await engine.destroySnapshot(snapshot.handle);
      await held.cleanup();
      const tracked = (await engine.listTrackers()).find((t) => t.device.minor === second.device.minor && t.device.major === second.device.major);
      assert.ok(tracked);
      assert.notEqual(tracked.generationId, '00000000-0000-0000-0000-000000000000', 'the module tracks it now');
      const again = await engine.createSnapshot([second.device]);
      await engine.destroySnapshot(again.handle);
      await other.cleanup();
    } finally {
      // Kernel state outlives the engine: leave no tracker behind for the next suite.
      for (const disk of [first, second]) await engine.stopTracking(disk.device).catch(() => undefined);
      await engine.close();
      await fsp.rm(stateDir, { recursive: true, force: true });
    }
  });
});

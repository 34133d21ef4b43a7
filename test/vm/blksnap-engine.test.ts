// The engine conformance suite against the real blksnap module (bdevfilter + veeamblksnap), inside the VM.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { BlksnapEngine } from '../../src/engine/blksnap';
import type { DeviceId } from '../../src/engine/types';
import { queryBlockDevice } from '../../src/native/blockdev';
import { engineConformance, type ConformanceTarget, type TestDisk } from '../engine/conformance';
import { readFile, writeDisk } from '../snapshots/helpers/env';
import { blksnapLoaded, guestDisks, vmSkipReason } from './run';

const skip = vmSkipReason() || (blksnapLoaded() ? false : 'BLKSNAP_KO not set: no module to test');

engineConformance('blksnap', async (): Promise<ConformanceTarget> => {
  const stateDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-blksnap-'));
  const disks: TestDisk[] = guestDisks().filter((d) => d.role === 'origin').map((d) => {
    const info = queryBlockDevice(d.device);
    return { path: d.device, device: { major: info.major, minor: info.minor }, size: info.size };
  });
  const store = guestDisks().find((d) => d.role === 'store')!;
  const storeInfo = queryBlockDevice(store.device);
  let next = 0;
  return {
    disks,
    async newEngine() {
      const engine = new BlksnapEngine({ stateDir });
      await engine.start();
      return engine;
    },
    writeDisk: async (disk, offset, data) => writeDisk(disk.path, offset, data),
    readDisk: async (disk, offset, length) => readFile(disk.path, offset, length),
    storage: {
      device: { major: storeInfo.major, minor: storeInfo.minor },
      take(bytes) {
        if (next + bytes > storeInfo.size) next = 0;
        const range = { offset: next, length: bytes };
        next += bytes;
        return [range];
      },
    },
    eventTimeoutMs: 30_000,
    // The module's default tracking block (2^16) and the errno its corruption event carries.
    cbtBlockSize: 64 * 1024,
    overflowCode: 'ENOSPC',
    async dispose() {
      await fsp.rm(stateDir, { recursive: true, force: true });
    },
  };
}, { skip });

// What only blksnap needs: its module keeps one snapshot at a time (a second one would orphan
// the first for good), and a device can only start being tracked while no snapshot lives.
describe('blksnap: one snapshot at a time', { skip, timeout: 600_000 }, () => {
  test('a second snapshot is refused while one lives, the first keeps working, and a device tracked meanwhile is tracked once it is gone', async () => {
    const stateDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-blksnap-one-'));
    const engine = new BlksnapEngine({ stateDir });
    await engine.start();
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
        const reader = await engine.openImage(snapshot.images[0]!);
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

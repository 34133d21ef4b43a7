// One conformance suite for every SnapshotEngine: the simulated one in CI, the veeamsnap one
// inside the VM. Where they disagree, the model is wrong.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { ByteRange, DeviceId } from '../../src/core/devices';
import type { SnapshotEngine, SnapshotImage, Snapstore, SnapstoreEvent } from '../../src/engine/types';

export const MiB = 1024 * 1024;
const KiB = 1024;

export interface TestDisk {
  device: DeviceId;
  path: string;
  size: number;
}

export interface ConformanceTarget {
  /** A new engine object over the same kernel state, as after an agent restart. */
  newEngine(): Promise<SnapshotEngine>;
  /** At least two disks of 64 MiB, not tracked at the start. */
  disks: TestDisk[];
  /** Writes to an origin the way any process would, durably. */
  writeDisk(disk: TestDisk, offset: number, data: Buffer): Promise<void>;
  readDisk(disk: TestDisk, offset: number, length: number): Promise<Buffer>;
  /** The device that holds snapstore space, and fresh ranges on it. */
  storage: { device: DeviceId; take(bytes: number): ByteRange[] };
  /** How long to wait for an event that the engine must eventually deliver. */
  eventTimeoutMs: number;
  /** Declared differences between modules: the CBT block size of a 64 MiB disk (default 256 KiB) and
   * the errno name of an overflowed snapshot's health (default ENODATA; blksnap says ENOSPC). */
  cbtBlockSize?: number;
  overflowCode?: string;
  dispose(): Promise<void>;
}

const same = (a: DeviceId, b: DeviceId): boolean => a.major === b.major && a.minor === b.minor;

function nextEvent(snapstore: Snapstore, type: SnapstoreEvent['type'], timeoutMs: number): Promise<SnapstoreEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      snapstore.off('event', onEvent);
      reject(new Error(`no ${type} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const onEvent = (event: SnapstoreEvent): void => {
      if (event.type !== type) return;
      clearTimeout(timer);
      snapstore.off('event', onEvent);
      resolve(event);
    };
    snapstore.on('event', onEvent);
  });
}

function pattern(length: number, seed: string): Buffer {
  const out = Buffer.alloc(length);
  let block = crypto.createHash('sha256').update(seed).digest();
  for (let offset = 0; offset < length; offset += block.length) {
    block.copy(out, offset);
    block = crypto.createHash('sha256').update(block).digest();
  }
  return out;
}

export function engineConformance(name: string, makeTarget: () => Promise<ConformanceTarget>,
  options: { skip?: string | false } = {}): void {
  describe(`engine conformance: ${name}`, { skip: options.skip ?? false }, () => {
    let target: ConformanceTarget;
    let engine: SnapshotEngine;
    let disk: TestDisk;
    let other: TestDisk;
    let CBT_BLOCK = 256 * KiB;

    before(async () => {
      target = await makeTarget();
      CBT_BLOCK = target.cbtBlockSize ?? CBT_BLOCK;
      engine = await target.newEngine();
      [disk, other] = target.disks as [TestDisk, TestDisk];
    });
    after(async () => {
      await engine?.close();
      await target?.dispose();
    });

    /** A snapstore with `bytes` of device space for `devices`, as the watchers would make it. */
    async function snapstoreFor(devices: TestDisk[], bytes = 16 * MiB, thresholdBytes = 2 * MiB): Promise<Snapstore> {
      const snapstore = await engine.createSnapstore({
        id: crypto.randomBytes(16).toString('hex'),
        devices: devices.map((d) => d.device),
        storage: target.storage.device,
        thresholdBytes,
      });
      await snapstore.addDeviceRanges(target.storage.take(bytes));
      return snapstore;
    }

    async function snapshotOf(devices: TestDisk[]): Promise<{ handle: string; images: SnapshotImage[]; snapstore: Snapstore }> {
      const snapstore = await snapstoreFor(devices);
      const snapshot = await engine.createSnapshot(devices.map((d) => d.device));
      return { handle: snapshot.handle, images: snapshot.images, snapstore };
    }

    async function release(snapshot: { handle: string; snapstore: Snapstore }): Promise<void> {
      await engine.destroySnapshot(snapshot.handle);
      await snapstore(snapshot).cleanup();
    }
    const snapstore = (s: { snapstore: Snapstore }): Snapstore => s.snapstore;

    async function readImage(image: SnapshotImage, offset: number, length: number): Promise<Buffer> {
      const reader = await engine.openImage(image);
      try {
        return Buffer.from(await reader.read(offset, length));
      } finally {
        await reader.close();
      }
    }

    async function tracker(d: TestDisk) {
      const found = (await engine.listTrackers()).find((t) => same(t.device, d.device));
      assert.ok(found, `${d.path} is tracked`);
      return found;
    }

    test('tracking a disk twice succeeds and lists it once, before any snapshot', async () => {
      await engine.startTracking(disk.device);
      await engine.startTracking(disk.device);
      const trackers = (await engine.listTrackers()).filter((t) => same(t.device, disk.device));
      assert.equal(trackers.length, 1);
      assert.equal(trackers[0].sizeBytes, disk.size);
      assert.equal(trackers[0].cbtBlockSize, CBT_BLOCK);
      assert.equal(trackers[0].cbtMapSize, disk.size / CBT_BLOCK);
      assert.equal(trackers[0].snapshotNumber, 0);
    });

    test('reading the CBT map needs a snapshot holding the disk', async () => {
      await assert.rejects(engine.readCbtMap(disk.device), { code: 'EPERM' });
    });

    test('CBT stamps count snapshots: each block holds the number of the snapshot that first saw it changed', async () => {
      const generation = (await tracker(disk)).generationId;
      await target.writeDisk(disk, 3 * CBT_BLOCK, pattern(4096, 'before 1'));
      const first = await snapshotOf([disk]);
      let map = await engine.readCbtMap(disk.device);
      assert.equal(map.length, disk.size / CBT_BLOCK);
      assert.equal(map[3], 1);
      assert.equal((await tracker(disk)).snapshotNumber, 1);
      await release(first);

      await target.writeDisk(disk, 5 * CBT_BLOCK + 8192, pattern(8192, 'before 2'));
      const second = await snapshotOf([disk]);
      // Written while the second snapshot lives: stamped with the third.
      await target.writeDisk(disk, 7 * CBT_BLOCK, pattern(CBT_BLOCK, 'during 2'));
      map = await engine.readCbtMap(disk.device);
      assert.deepEqual([map[3], map[5], map[7]], [1, 2, 0]);
      await release(second);

      const third = await snapshotOf([disk]);
      map = await engine.readCbtMap(disk.device);
      assert.deepEqual([map[3], map[5], map[7]], [1, 2, 3]);
      const untouched = [...map].filter((stamp, index) => ![3, 5, 7].includes(index) && stamp !== 0);
      assert.deepEqual(untouched, [], 'blocks nobody wrote keep stamp 0');
      const info = await tracker(disk);
      assert.equal(info.snapshotNumber, 3);
      assert.equal(info.generationId, generation, 'snapshots do not change the generation');
      await release(third);
    });

    test('an image stays byte-identical to the origin at snapshot time while the origin is written', async () => {
      const before = pattern(4 * MiB, 'image content');
      await target.writeDisk(disk, 8 * MiB, before);
      const snapshot = await snapshotOf([disk]);
      await target.writeDisk(disk, 8 * MiB, pattern(4 * MiB, 'overwritten'));
      await target.writeDisk(disk, 9 * MiB + 512, pattern(1000, 'unaligned overwrite'));
      const image = snapshot.images.find((i) => same(i.original, disk.device))!;
      assert.ok(before.equals(await readImage(image, 8 * MiB, 4 * MiB)), 'the image keeps the old bytes');
      const now = await target.readDisk(disk, 8 * MiB, 4 * MiB);
      assert.ok(now.subarray(0, MiB).equals(pattern(4 * MiB, 'overwritten').subarray(0, MiB)), 'the origin has the new bytes');
      const reader = await engine.openImage(image);
      assert.equal(reader.size, disk.size);
      await reader.close();
      await release(snapshot);
    });

    test('the generation changes when tracking is re-created, and not otherwise', async () => {
      const generation = (await tracker(disk)).generationId;
      await engine.startTracking(disk.device);
      assert.equal((await tracker(disk)).generationId, generation, 'tracking an already tracked disk keeps it');
      await engine.stopTracking(disk.device);
      assert.equal((await engine.listTrackers()).some((t) => same(t.device, disk.device)), false);
      await assert.rejects(engine.readCbtMap(disk.device), { code: 'ENODATA' });
      await engine.startTracking(disk.device);
      const fresh = await tracker(disk);
      assert.notEqual(fresh.generationId, generation);
      assert.equal(fresh.snapshotNumber, 0);
    });

    test('a two-disk snapshot has one image per disk, each with its own disk\'s content', async () => {
      await target.writeDisk(disk, 0, pattern(MiB, 'disk one'));
      await target.writeDisk(other, 0, pattern(MiB, 'disk two'));
      const snapshot = await snapshotOf([disk, other]);
      assert.equal(snapshot.images.length, 2);
      const listed = await engine.listImages();
      for (const d of [disk, other]) {
        const image = snapshot.images.find((i) => same(i.original, d.device));
        assert.ok(image, `an image of ${d.path}`);
        assert.ok(listed.some((i) => same(i.image, image.image) && same(i.original, d.device)));
      }
      await target.writeDisk(other, 0, pattern(MiB, 'disk two, later'));
      const [one, two] = await Promise.all([disk, other].map((d) =>
        readImage(snapshot.images.find((i) => same(i.original, d.device))!, 0, MiB)));
      assert.ok(one.equals(pattern(MiB, 'disk one')));
      assert.ok(two.equals(pattern(MiB, 'disk two')));
      assert.ok((await engine.readCbtMap(other.device)).length > 0, 'an untracked disk is tracked by the snapshot');
      await assert.rejects(engine.createSnapshot([disk.device]), { code: 'EALREADY' });
      await release(snapshot);
      assert.deepEqual((await engine.listImages()).filter((i) => snapshot.images.some((s) => same(s.image, i.image))), []);
    });

    test('a snapshot needs a snapstore for every disk and refuses duplicates and empty lists', async () => {
      await assert.rejects(engine.createSnapshot([disk.device]), { code: 'ENODATA' });
      await assert.rejects(engine.createSnapshot([]), { code: 'ENODEV' });
      const store = await snapstoreFor([disk]);
      await assert.rejects(engine.createSnapshot([disk.device, disk.device]), { code: 'EINVAL' });
      await store.cleanup();
    });

    test('a small snapstore fills past its threshold, is refilled, then overflows: reads fail and health says why', async () => {
      const store = await snapstoreFor([disk], MiB, 512 * KiB);
      const snapshot = await engine.createSnapshot([disk.device]);
      const image = snapshot.images[0];
      const halffill = nextEvent(store, 'halffill', target.eventTimeoutMs);
      await target.writeDisk(disk, 16 * MiB, pattern(640 * KiB, 'fill past threshold'));
      const first = await halffill;
      assert.ok(first.filledBytes >= 512 * KiB && first.filledBytes <= MiB, `filled ${first.filledBytes}`);
      assert.deepEqual(await engine.snapshotHealth(disk.device), { ok: true });

      await store.addDeviceRanges(target.storage.take(MiB));
      const again = nextEvent(store, 'halffill', target.eventTimeoutMs);
      await target.writeDisk(disk, 17 * MiB, pattern(960 * KiB, 'fill again'));
      assert.ok((await again).filledBytes > first.filledBytes);

      const overflow = nextEvent(store, 'overflow', target.eventTimeoutMs);
      await target.writeDisk(disk, 20 * MiB, pattern(2 * MiB, 'overflow'));
      await overflow;
      const health = await engine.snapshotHealth(disk.device);
      assert.equal(health.ok, false);
      assert.equal(!health.ok && health.code, target.overflowCode ?? 'ENODATA');
      await assert.rejects(readImage(image, 0, 4096), { code: 'EIO' });
      await engine.destroySnapshot(snapshot.handle);
      await store.cleanup();
    });

    test('destroy then clean up: the snapstore terminates at cleanup', async () => {
      const snapshot = await snapshotOf([disk]);
      await engine.destroySnapshot(snapshot.handle);
      await assert.rejects(engine.destroySnapshot(snapshot.handle), { code: 'ENODATA' });
      const terminated = await snapshot.snapstore.cleanup();
      assert.equal(typeof terminated.filledBytes, 'number');
    });

    test('clean up then destroy: the snapshot keeps working until destroyed, then the snapstore terminates', async () => {
      await target.writeDisk(disk, 0, pattern(64 * KiB, 'held by the snapshot'));
      const snapshot = await snapshotOf([disk]);
      let terminated = false;
      const cleanup = snapshot.snapstore.cleanup().then((result) => {
        terminated = true;
        return result;
      });
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(terminated, false, 'no terminate while a snapshot uses the snapstore');
      await assert.rejects(engine.createSnapshot([other.device]), { code: 'ENODATA' });
      await target.writeDisk(disk, 0, pattern(64 * KiB, 'after cleanup'));
      const image = snapshot.images[0];
      assert.ok((await readImage(image, 0, 64 * KiB)).equals(pattern(64 * KiB, 'held by the snapshot')));
      await engine.destroySnapshot(snapshot.handle);
      await cleanup;
      assert.equal(terminated, true);
      await assert.rejects(engine.createSnapshot([disk.device]), { code: 'ENODATA' }, 'the cleaned-up snapstore is gone');
    });

    test('after snapshot 255 the numbers wrap to a new generation', async () => {
      const start = await tracker(disk);
      let last = start;
      while (last.generationId === start.generationId && last.snapshotNumber < 255) {
        await release(await snapshotOf([disk]));
        last = await tracker(disk);
      }
      assert.equal(last.snapshotNumber, 255, 'the 255th capture still reports the old generation');
      assert.equal(last.generationId, start.generationId);
      await target.writeDisk(disk, 2 * CBT_BLOCK, pattern(4096, 'after the wrap'));
      const wrapped = await snapshotOf([disk]);
      const info = await tracker(disk);
      assert.equal(info.snapshotNumber, 1);
      assert.notEqual(info.generationId, start.generationId);
      const map = await engine.readCbtMap(disk.device);
      assert.equal(map[2], 1, 'a write after the wrap carries the new generation\'s first number');
      assert.ok([...map].every((stamp) => stamp <= 1));
      await release(wrapped);
    });

    test('a fresh engine object sees the trackers and images left by the previous agent process', async () => {
      await engine.startTracking(other.device);
      const atSnapshot = await target.readDisk(disk, 0, 4096);
      const snapshot = await snapshotOf([disk, other]);
      const trackersBefore = await engine.listTrackers();
      await engine.close();

      engine = await target.newEngine();
      const trackersAfter = await engine.listTrackers();
      for (const t of trackersBefore) {
        const again = trackersAfter.find((a) => same(a.device, t.device));
        assert.ok(again, `tracker ${t.device.major}:${t.device.minor} survives`);
        assert.equal(again.generationId, t.generationId);
        assert.equal(again.snapshotNumber, t.snapshotNumber);
      }
      // Without the event stream, space can still be added by id, and the snapshot stays healthy.
      await engine.addSnapstoreSpace(snapshot.snapstore.id, target.storage.take(MiB));
      assert.deepEqual(await engine.snapshotHealth(disk.device), { ok: true });
      const known = (await engine.listSnapshots()).find((s) => s.handle === snapshot.handle);
      assert.ok(known, 'the snapshot is listed by its handle');
      assert.equal(known.images.length, 2);
      const images = await engine.listImages();
      for (const image of snapshot.images) assert.ok(images.some((i) => same(i.image, image.image) && same(i.original, image.original)));
      await target.writeDisk(disk, 0, pattern(4096, 'after restart'));
      const image = snapshot.images.find((i) => same(i.original, disk.device))!;
      assert.ok((await readImage(image, 0, 4096)).equals(atSnapshot), 'the image still shows the snapshot-time bytes');
      await engine.destroySnapshot(snapshot.handle);
      await engine.cleanupSnapstore(snapshot.snapstore.id);
      assert.deepEqual(await engine.listImages(), []);
      assert.deepEqual(await engine.listSnapshots(), []);
      await engine.stopTracking(other.device);
      await engine.stopTracking(disk.device);
    });
  });
}

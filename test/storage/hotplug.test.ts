// Hot-plug: disks appearing and disappearing, on a fake sysfs tree and with real loop devices,
// by polling and by kernel uevents; stop() must leave no timer or child process behind.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DiskCatalog } from '../../src/storage/catalog';
import type { Disk } from '../../src/storage/disks';
import { DiskWatcher } from '../../src/storage/hotplug';
import { attachLoopDevice, findCommand, loopDevicesUnavailable } from '../native/helpers/loop';
import { fakeBlkid, fakeSysfs, recordingLogger } from './helpers';

const MiB = 1024 * 1024;
let tmp: string;

before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-hotplug-')); });
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function next(watcher: DiskWatcher, event: 'added' | 'removed', name: string, timeoutMs = 10_000): Promise<Disk> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      watcher.off(event, listener);
      reject(new Error(`no '${event}' event for ${name} within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (disk: Disk): void => {
      if (disk.name !== name) return; // other tests on this machine attach loop devices too
      clearTimeout(timer);
      watcher.off(event, listener);
      resolve(disk);
    };
    watcher.on(event, listener);
  });
}

/** Timers and child processes alive, once handles closed just now are gone (next loop turn). */
async function activeHandles(): Promise<string[]> {
  await new Promise((resolve) => setTimeout(resolve, 10));
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout' || r === 'ProcessWrap').sort();
}

describe('disk hot-plug', () => {
  it('reports disks added to and removed from a fake sysfs, probing only on change', async () => {
    const root = path.join(tmp, 'fake');
    const sysRoot = fakeSysfs(root, [{ name: 'sda', dev: '8:0', size: 2048 }]);
    const blkid = fakeBlkid({});
    const catalog = new DiskCatalog({ log: recordingLogger().log, destinations: [], sysRoot, devRoot: path.join(root, 'dev'), blkid });
    const baseline = await activeHandles();
    const watcher = new DiskWatcher({ source: catalog, log: recordingLogger().log, sysRoot, mode: 'poll', pollIntervalMs: 20 });
    assert.deepEqual((await watcher.start()).map((d) => d.name), ['sda']);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(blkid.calls.length, 1, 'nothing changed: no listing, no probe');

    const added = next(watcher, 'added', 'sdb');
    fakeSysfs(root, [{ name: 'sdb', dev: '8:16', size: 4096 }]);
    assert.equal((await added).size, 4096 * 512);

    const removed = next(watcher, 'removed', 'sda');
    for (const link of ['block/sda', 'class/block/sda', 'dev/block/8:0']) fs.rmSync(path.join(sysRoot, link));
    assert.deepEqual((await removed).device, { major: 8, minor: 0 });

    await watcher.stop();
    assert.deepEqual(await activeHandles(), baseline, 'stop() leaves no timer behind');
  });

  it('check() runs at most one listing at a time and looks again if asked meanwhile', async () => {
    const root = path.join(tmp, 'serial');
    const sysRoot = fakeSysfs(root, [{ name: 'sda', dev: '8:0', size: 2048 }]);
    let listings = 0;
    let running = 0;
    const catalog = new DiskCatalog({ log: recordingLogger().log, destinations: [], sysRoot, devRoot: path.join(root, 'dev'), blkid: fakeBlkid({}) });
    const source = {
      ...catalog,
      list: async () => {
        listings++;
        assert.equal(running++, 0, 'listings overlap');
        await new Promise((resolve) => setTimeout(resolve, 30));
        running--;
        return catalog.list();
      },
      get: catalog.get.bind(catalog),
      byDevice: catalog.byDevice.bind(catalog),
    };
    const watcher = new DiskWatcher({ source, log: recordingLogger().log, sysRoot, mode: 'poll', pollIntervalMs: 60_000 });
    await watcher.start();
    fakeSysfs(root, [{ name: 'sdb', dev: '8:16', size: 2048 }]);
    const first = watcher.check();
    fakeSysfs(root, [{ name: 'sdc', dev: '8:32', size: 2048 }]);
    const second = watcher.check();
    const seen: string[] = [];
    watcher.on('added', (disk: Disk) => seen.push(disk.name));
    await Promise.all([first, second]);
    assert.deepEqual(seen.sort(), ['sdb', 'sdc']);
    assert.ok(listings <= 3, `${listings} listings`);
    await watcher.stop();
  });

  for (const mode of ['poll', 'udev'] as const) {
    const skip = loopDevicesUnavailable() ?? (mode === 'udev' && findCommand('udevadm') === undefined ? 'udevadm is not installed' : false);
    it(`reports a loop device attached and detached (${mode})`, { skip }, async () => {
      const catalog = new DiskCatalog({ log: recordingLogger().log, destinations: [] });
      const baseline = await activeHandles();
      const watcher = new DiskWatcher({ source: catalog, log: recordingLogger().log, list: { includeVirtual: true }, mode, pollIntervalMs: 100, settleMs: 50 });
      await watcher.start();
      const file = path.join(tmp, `${mode}.img`);
      fs.writeFileSync(file, '');
      fs.truncateSync(file, 8 * MiB);
      const loop = attachLoopDevice(file);
      const name = path.basename(loop.path);
      try {
        const added = await next(watcher, 'added', name);
        assert.equal(added.size, 8 * MiB);
        assert.deepEqual(added.device, { major: loop.major, minor: loop.minor });
        const removed = next(watcher, 'removed', name);
        loop.detach();
        assert.equal((await removed).path, loop.path);
      } finally {
        loop.detach();
        await watcher.stop();
      }
      assert.deepEqual(await activeHandles(), baseline, 'stop() leaves no timer or child process behind');
    });
  }

  it('falls back to polling when udevadm cannot run', { skip: loopDevicesUnavailable() ?? false }, async () => {
    const logger = recordingLogger();
    const watcher = new DiskWatcher({
      source: new DiskCatalog({ log: logger.log, destinations: [] }), log: logger.log, list: { includeVirtual: true }, mode: 'udev', pollIntervalMs: 100,
    });
    const savedPath = process.env.PATH;
    process.env.PATH = path.join(tmp, 'no-such-dir');
    try {
      await watcher.start();
      await new Promise((resolve) => setTimeout(resolve, 100));
    } finally {
      process.env.PATH = savedPath;
    }
    assert.match(logger.warnings().join('\n'), /polling/);
    const file = path.join(tmp, 'fallback.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 4 * MiB);
    const loop = attachLoopDevice(file);
    try {
      await next(watcher, 'added', path.basename(loop.path));
    } finally {
      loop.detach();
      await watcher.stop();
    }
  });
});

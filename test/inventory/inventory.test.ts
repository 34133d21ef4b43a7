import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { recover } from '../../src/agent/recovery';
import { AgentState } from '../../src/db/state';
import { SimulatedEngine } from '../../src/engine/simulated/engine';
import { isAgentError } from '../../src/core/errors';
import { silentLogger } from '../../src/core/log';
import { ExportRegistry } from '../../src/exports/registry';
import { Inventory, type InventoryOptions } from '../../src/inventory/inventory';
import { fileSystemDevice } from '../../src/host/sysfs';
import { queryBlockDevice } from '../../src/native/blockdev';
import { SnapshotManager } from '../../src/snapshots/manager';
import { SimulatedDiskCatalog } from '../../src/storage/simulated-catalog';

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

/** An inventory brought up the way the agent does it (agent/recovery.ts), in `bootId`. */
async function setup(overrides: Partial<InventoryOptions> = {}, dir?: string, bootId = 'boot-1') {
  dir ??= await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-inventory-'));
  const destination = path.join(dir, 'snapstores');
  fs.mkdirSync(destination, { recursive: true });
  const disks = ['vda', 'vdb'].map((name) => {
    const file = path.join(dir, `${name}.img`);
    if (!fs.existsSync(file)) fs.writeFileSync(file, Buffer.alloc(4 * MiB, name === 'vda' ? 1 : 2));
    return file;
  });
  const engine = new SimulatedEngine({ disks, stateDir: path.join(dir, 'engine'), bootId });
  await engine.start();
  const state = AgentState.open(path.join(dir, 'agent.db'));
  const log = silentLogger();
  const inventory = new Inventory({
    engine, state, log, source: new SimulatedDiskCatalog(engine.disks(), { log }),
    destinations: [destination], configMappings: [], autoInitPhysicalDisks: true, requireBlockDevices: false,
    hotplug: { mode: 'poll', pollIntervalMs: 60_000 }, ...overrides,
  });
  const manager = new SnapshotManager({
    engine, state, exports: new ExportRegistry({ state, engine }), log, snapStoreFileSize: MiB,
    locationDevice: fileSystemDevice, diskSize: (file) => queryBlockDevice(file).size,
  });
  await recover({ state, engine, inventory, manager, destinations: [destination], bootId, log });
  const close = async (): Promise<void> => {
    await manager.stop();
    await inventory.stop();
    await engine.close();
    state.close();
  };
  cleanups.push(async () => {
    await close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return { dir, destination, engine, state, inventory, close };
}

const rejectsKind = (kind: string, pattern: RegExp) => (err: unknown): boolean => {
  assert.ok(isAgentError(err, kind as never), String(err));
  assert.match((err as Error).message, pattern);
  return true;
};

describe('inventory', () => {
  test('auto_init tracks every eligible disk and lists it with its tracking id', async () => {
    const { inventory, engine } = await setup();
    const listed = await inventory.listDisks({ includeVirtual: false, includeSwap: false });
    assert.deepEqual(listed.map((d) => [d.disk.name, d.trackingId]), [['vda', 'vda'], ['vdb', 'vdb']]);
    assert.equal((await engine.listTrackers()).length, 2);
    assert.equal((await inventory.getDisk('vdb')).disk.name, 'vdb');
    await assert.rejects(inventory.getDisk('sdz'), rejectsKind('not-found', /sdz is not tracked/));
  });

  test('without auto_init nothing is tracked', async () => {
    const { inventory } = await setup({ autoInitPhysicalDisks: false });
    const listed = await inventory.listDisks({ includeVirtual: false, includeSwap: false });
    assert.deepEqual(listed.map((d) => d.trackingId), [null, null]);
  });

  test('mappings: from the config, and from the API once per disk to a configured location', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-inventory-'));
    const destination = path.join(dir, 'snapstores');
    const { inventory } = await setup({
      configMappings: [{ device: 'vda', location: destination }, { device: 'nvme9n1', location: destination }],
    }, dir);
    assert.deepEqual((await inventory.listMappings()).map((m) => [m.trackedDiskId, m.storageLocation]), [['vda', destination]]);
    await assert.rejects(inventory.createMapping('vda', destination), rejectsKind('conflict', /vda already has a snapstore mapping/));
    await assert.rejects(inventory.createMapping('sdz', destination), rejectsKind('not-found', /sdz is not tracked/));
    await assert.rejects(inventory.createMapping('vdb', '/elsewhere'), rejectsKind('not-found', /location \/elsewhere is not configured/));
    const created = await inventory.createMapping('vdb', `${destination}/`);
    assert.deepEqual({ ...created, id: '' }, { id: '', trackedDiskId: 'vdb', storageLocation: destination });
    assert.match(created.id, /^[0-9a-f-]{36}$/);
  });

  test('locations report live capacity and the bytes of our files', async () => {
    const { inventory, destination, state } = await setup();
    const [location] = await inventory.listLocations();
    assert.equal(location.path, destination);
    assert.ok(location.totalBytes > 0 && location.availableBytes <= location.totalBytes);
    assert.equal(location.allocatedBytes, 0);
    assert.equal(state.files.bytesIn(destination), 0);
  });

  test('after a reboot the snapstore files of the old boot go, and only ours', async () => {
    const first = await setup();
    const ours = path.join(first.destination, 'a'.repeat(32));
    const theirs = path.join(first.destination, 'b'.repeat(32));
    const unrelated = path.join(first.destination, 'backups');
    for (const dir of [ours, theirs, unrelated]) fs.mkdirSync(dir);
    fs.writeFileSync(path.join(ours, 'x.chunk'), 'cow');
    fs.writeFileSync(path.join(theirs, 'notes.txt'), 'keep me');
    fs.writeFileSync(path.join(unrelated, 'y.chunk'), 'keep me too');
    await first.close();
    cleanups.pop();
    const second = await setup({}, first.dir, 'boot-2');
    assert.equal(fs.existsSync(ours), false);
    assert.equal(fs.existsSync(path.join(theirs, 'notes.txt')), true);
    assert.equal(fs.existsSync(path.join(unrelated, 'y.chunk')), true);
    assert.equal(second.state.meta.get('boot_id'), 'boot-2');
    assert.equal((await second.engine.listTrackers()).length, 2, 'tracking restarts after a reboot');
  });
});

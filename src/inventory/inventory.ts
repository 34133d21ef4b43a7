// What the agent tracks and where snapstores go: tracked disks, snapstore locations and the
// disk -> location mappings, plus the start-up work that keeps them true across restarts,
// reboots and disks that come and go.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { SnapstoreMapping } from '../config/config';
import type { AgentState } from '../db/state';
import type { DeviceId, SnapshotEngine } from '../engine/types';
import { conflict, notFound } from '../core/errors';
import type { Logger } from '../core/log';
import type { DiskEntry, DiskListOptions, LocationInfo, MappingInfo } from '../service';
import { eligibleDisks, type Disk, type DiskSource } from '../storage/disks';
import { DiskWatcher } from '../storage/hotplug';
import { locationStatus, requireBlockDevice, resolveLocation, type SnapstoreLocation } from '../storage/locations';
import { sameDevice } from '../core/devices';

export interface InventoryOptions {
  engine: SnapshotEngine;
  state: AgentState;
  log: Logger;
  source: DiskSource;
  destinations: readonly string[];
  configMappings: readonly SnapstoreMapping[];
  autoInitPhysicalDisks: boolean;
  /** The kernel needs locations on real block devices; the simulated engine does not. */
  requireBlockDevices: boolean;
  bootId: string;
  hotplug?: { mode?: 'auto' | 'udev' | 'poll'; pollIntervalMs?: number };
}

/** Snapstore directories are named by their 32-hex-digit id and hold only .chunk files. */
const SNAPSTORE_DIR = /^[0-9a-f]{32}$/;


export class Inventory {
  private locations: SnapstoreLocation[] = [];
  private watcher: DiskWatcher | null = null;

  constructor(private readonly options: InventoryOptions) {}

  private get state(): AgentState {
    return this.options.state;
  }

  /** Before the snapshot manager starts: boot check, locations, tracking, mappings, hot-plug. */
  async start(): Promise<void> {
    const { state, log, destinations } = this.options;
    const previousBoot = state.getMeta('boot_id');
    if (previousBoot !== this.options.bootId) {
      if (previousBoot !== undefined) log.info('the machine rebooted since the last run: kernel snapshots are gone, starting clean');
      await this.forgetKernelState();
      state.setMeta('boot_id', this.options.bootId);
    }
    this.locations = await Promise.all(destinations.map((d) => resolveLocation(d)));
    if (this.options.requireBlockDevices) this.locations.forEach(requireBlockDevice);

    for (const row of state.trackedDisks()) {
      const disk = await this.options.source.get(row.id);
      if (disk === undefined || !sameDevice(disk.device, row)) {
        log.warn({ disk: row.id }, 'a tracked disk is gone: it stays known but cannot be snapshotted until it returns');
        continue;
      }
      await this.options.engine.startTracking(disk.device);
    }
    if (this.options.autoInitPhysicalDisks) {
      for (const disk of await eligibleDisks(this.options.source)) await this.track(disk);
    }
    this.applyConfigMappings();
    if (this.options.autoInitPhysicalDisks) await this.watchHotplug();
  }

  async stop(): Promise<void> {
    await this.watcher?.stop();
    this.watcher = null;
  }

  /**
   * After a reboot (or with a new database) no kernel snapshot or snapstore exists any more:
   * the rows go, and so do snapstore files, but only ours: directories named like a snapstore
   * that hold nothing but chunk files.
   */
  private async forgetKernelState(): Promise<void> {
    const { state, log } = this.options;
    const directories = new Set(state.snapstores().map((s) => s.directory));
    for (const destination of this.options.destinations) {
      for (const entry of await fsp.readdir(destination, { withFileTypes: true })) {
        if (!entry.isDirectory() || !SNAPSTORE_DIR.test(entry.name)) continue;
        const dir = path.join(destination, entry.name);
        const files = await fsp.readdir(dir);
        if (files.every((f) => f.endsWith('.chunk'))) directories.add(dir);
        else log.warn({ dir }, 'not deleting a directory that looks like a snapstore but holds other files');
      }
    }
    for (const dir of directories) await fsp.rm(dir, { recursive: true, force: true });
    state.transaction(() => {
      state.db.exec('DELETE FROM snapstore_files; DELETE FROM volume_snapshots; DELETE FROM snapstores; DELETE FROM snapshots;');
    });
    if (directories.size > 0) log.info({ directories: [...directories] }, 'deleted snapstore files of the previous boot');
  }

  private async track(disk: Disk): Promise<void> {
    await this.options.engine.startTracking(disk.device);
    this.state.upsertTrackedDisk({ id: disk.name, path: disk.path, major: disk.device.major, minor: disk.device.minor });
    this.options.log.info({ disk: disk.name, path: disk.path }, 'disk tracked');
  }

  /** The config names disks by kernel name; a disk it names but that is not tracked is skipped, not fatal. */
  private applyConfigMappings(): void {
    const { state, log } = this.options;
    for (const mapping of this.options.configMappings) {
      if (state.trackedDisk(mapping.device) === undefined) {
        log.error({ disk: mapping.device }, 'the config maps a disk that is not tracked: mapping skipped');
        continue;
      }
      const existing = state.mappingOf(mapping.device);
      if (existing?.location === mapping.location) continue;
      state.transaction(() => {
        if (existing !== undefined) state.db.prepare('DELETE FROM mappings WHERE id = ?').run(existing.id);
        state.insertMapping({ id: crypto.randomUUID(), diskId: mapping.device, location: mapping.location });
      });
      log.info({ disk: mapping.device, location: mapping.location }, 'snapstore mapping from the config applied');
    }
  }

  private async watchHotplug(): Promise<void> {
    const { log } = this.options;
    this.watcher = new DiskWatcher({ source: this.options.source, log, ...this.options.hotplug });
    this.watcher.on('added', (disk: Disk) => {
      this.track(disk).catch((err) => log.error({ err, disk: disk.name }, 'cannot track a new disk'));
    });
    this.watcher.on('removed', (disk: Disk) => log.warn({ disk: disk.name }, 'a disk disappeared'));
    this.watcher.on('error', (err: Error) => log.error({ err }, 'disk hot-plug monitoring failed'));
    await this.watcher.start();
  }

  // ---- disks

  private trackingId(disk: Disk): string | null {
    return this.state.trackedDisks().find((row) => sameDevice(row, disk.device))?.id ?? null;
  }

  async listDisks(options: DiskListOptions): Promise<DiskEntry[]> {
    const disks = await this.options.source.list(options);
    return disks.map((disk) => ({ disk, trackingId: this.trackingId(disk) }));
  }

  async getDisk(id: string): Promise<DiskEntry> {
    const row = this.state.trackedDisk(id);
    if (row === undefined) throw notFound(`disk ${id} is not tracked`);
    const disk = await this.options.source.get(id);
    if (disk === undefined || !sameDevice(disk.device, row)) throw notFound(`disk ${id} is tracked but not present`);
    return { disk, trackingId: id };
  }

  // ---- locations and mappings

  /** The block device under a location: where the kernel writes its copy-on-write data. */
  locationDevice(location: string): DeviceId {
    const found = this.locations.find((l) => l.path === location);
    if (found === undefined) throw notFound(`snapstore location ${location} is not configured`);
    return { ...found.device };
  }

  async listLocations(): Promise<LocationInfo[]> {
    return Promise.all(this.locations.map(async (location) => {
      const status = await locationStatus(location, (p) => this.state.allocatedBytesIn(p));
      return {
        path: status.path, devicePath: status.devicePath, major: status.device.major, minor: status.device.minor,
        totalBytes: status.totalBytes, availableBytes: status.availableBytes, allocatedBytes: status.allocatedBytes,
      };
    }));
  }

  async listMappings(): Promise<MappingInfo[]> {
    return this.state.mappings().map((m) => ({ id: m.id, trackedDiskId: m.diskId, storageLocation: m.location }));
  }

  async createMapping(diskId: string, location: string): Promise<MappingInfo> {
    const { state } = this;
    if (state.trackedDisk(diskId) === undefined) throw notFound(`disk ${diskId} is not tracked`);
    // "/mnt/snap/" and "/mnt/snap" name the same location.
    const normalised = path.normalize(location).replace(/(.)\/+$/, '$1');
    if (!this.locations.some((l) => l.path === normalised)) throw notFound(`snapstore location ${location} is not configured`);
    return state.transaction(() => {
      const existing = state.mappingOf(diskId);
      if (existing !== undefined) throw conflict(`disk ${diskId} already has a snapstore mapping: ${existing.id}`);
      const row = { id: crypto.randomUUID(), diskId, location: normalised };
      state.insertMapping(row);
      return { id: row.id, trackedDiskId: diskId, storageLocation: normalised };
    });
  }
}

/** /proc/sys/kernel/random/boot_id: changes at every boot. */
export function currentBootId(): string {
  return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}

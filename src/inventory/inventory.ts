// What the agent tracks and where snapstores go: tracked disks, snapstore locations and the
// disk -> location mappings, plus the start-up work that keeps them true across restarts and
// disks that come and go.
import crypto from 'node:crypto';
import path from 'node:path';
import type { SnapstoreMapping } from '../config/config';
import type { AgentState } from '../db/state';
import { sameDevice, type DeviceId } from '../core/devices';
import type { SnapshotEngine } from '../engine/types';
import { conflict, notFound } from '../core/errors';
import type { Logger } from '../core/log';
import type { DiskEntry, DiskListOptions, LocationInfo, MappingInfo } from './types';
import { eligibleDisks, type Disk, type DiskSource } from '../storage/disks';
import { DiskWatcher } from '../storage/hotplug';
import { locationStatus, requireBlockDevice, resolveLocation, type SnapstoreLocation } from '../storage/locations';

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
  hotplug?: { mode?: 'auto' | 'udev' | 'poll'; pollIntervalMs?: number };
}

export class Inventory {
  private locations: SnapstoreLocation[] = [];
  private watcher: DiskWatcher | null = null;

  constructor(private readonly options: InventoryOptions) {}

  private get state(): AgentState {
    return this.options.state;
  }

  /** Before the snapshot manager starts (agent/recovery.ts): locations, tracking, mappings, hot-plug. */
  async start(): Promise<void> {
    const { state, log, destinations } = this.options;
    this.locations = await Promise.all(destinations.map((d) => resolveLocation(d)));
    if (this.options.requireBlockDevices) this.locations.forEach(requireBlockDevice);

    for (const row of state.disks.list()) {
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

  private async track(disk: Disk): Promise<void> {
    await this.options.engine.startTracking(disk.device);
    this.state.disks.upsert({ id: disk.name, path: disk.path, major: disk.device.major, minor: disk.device.minor });
    this.options.log.info({ disk: disk.name, path: disk.path }, 'disk tracked');
  }

  /** The config names disks by kernel name; a disk it names but that is not tracked is skipped, not fatal. */
  private applyConfigMappings(): void {
    const { state, log } = this.options;
    for (const mapping of this.options.configMappings) {
      if (state.disks.get(mapping.device) === undefined) {
        log.error({ disk: mapping.device }, 'the config maps a disk that is not tracked: mapping skipped');
        continue;
      }
      const existing = state.mappings.ofDisk(mapping.device);
      if (existing?.location === mapping.location) continue;
      state.transaction(() => {
        if (existing !== undefined) state.mappings.delete(existing.id);
        state.mappings.insert({ id: crypto.randomUUID(), diskId: mapping.device, location: mapping.location });
      });
      log.info({ disk: mapping.device, location: mapping.location }, 'snapstore mapping from the config applied');
    }
  }

  private async watchHotplug(): Promise<void> {
    const { log } = this.options;
    this.watcher = new DiskWatcher({ source: this.options.source, log, ...this.options.hotplug });
    this.watcher.on('added', (disk: Disk) => {
      this.track(disk).catch((err: unknown) => log.error({ err, disk: disk.name }, 'cannot track a new disk'));
    });
    this.watcher.on('removed', (disk: Disk) => log.warn({ disk: disk.name }, 'a disk disappeared'));
    this.watcher.on('error', (err: Error) => log.error({ err }, 'disk hot-plug monitoring failed'));
    await this.watcher.start();
  }

  // ---- disks

  private trackingId(disk: Disk): string | null {
    return this.state.disks.list().find((row) => sameDevice(row, disk.device))?.id ?? null;
  }

  async listDisks(options: DiskListOptions): Promise<DiskEntry[]> {
    const disks = await this.options.source.list(options);
    return disks.map((disk) => ({ disk, trackingId: this.trackingId(disk) }));
  }

  async getDisk(id: string): Promise<DiskEntry> {
    const row = this.state.disks.get(id);
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
    return Promise.all(this.locations.map((location) => locationStatus(location, (p) => this.state.files.bytesIn(p))));
  }

  async listMappings(): Promise<MappingInfo[]> {
    return this.state.mappings.list().map((m) => ({ id: m.id, trackedDiskId: m.diskId, storageLocation: m.location }));
  }

  async createMapping(diskId: string, location: string): Promise<MappingInfo> {
    const { state } = this;
    if (state.disks.get(diskId) === undefined) throw notFound(`disk ${diskId} is not tracked`);
    // "/mnt/snap/" and "/mnt/snap" name the same location.
    const normalised = path.normalize(location).replace(/(.)\/+$/, '$1');
    if (!this.locations.some((l) => l.path === normalised)) throw notFound(`snapstore location ${location} is not configured`);
    return state.transaction(() => {
      const existing = state.mappings.ofDisk(diskId);
      if (existing !== undefined) throw conflict(`disk ${diskId} already has a snapstore mapping: ${existing.id}`);
      const row = { id: crypto.randomUUID(), diskId, location: normalised };
      state.mappings.insert(row);
      return { id: row.id, trackedDiskId: diskId, storageLocation: normalised };
    });
  }
}

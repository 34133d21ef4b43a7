// The one place that publishes, withdraws and opens exports, for both doors. Exports are rows
// written in the transaction that completes their snapshot and deleted when it goes, so a
// restarted agent serves exactly what it served before; the events tell the servers at once.
import { EventEmitter } from 'node:events';
import { AgentError, errorCode, notFound } from '../core/errors';
import { guardReads, type ImageReader } from '../core/image';
import type { AgentState, CapturedVolume } from '../db/state';
import type { SnapshotEngine } from '../engine/types';
import { ZeroExtents } from './zeros';
import { API_PREFIX, type Export, type ExportAddress, type ExportEvents, type ExportSource } from './types';

export const exportName = (snapshotId: string, diskId: string): string => `${snapshotId}/${diskId}`;
export const consumePath = (snapshotId: string, diskId: string): string => `${API_PREFIX}/snapshots/${snapshotId}/consume/${diskId}`;

export interface RegistryOptions {
  state: AgentState;
  engine: Pick<SnapshotEngine, 'openImage'>;
}

const failedError = (snapshotId: string, reason: string): AgentError =>
  new AgentError('conflict', `snapshot ${snapshotId} has failed: ${reason}`, { code: 'EIO' });

export class ExportRegistry extends EventEmitter<ExportEvents> implements ExportSource {
  /** Asked when an image answers EIO: finds out whether its snapshot has failed meanwhile. */
  private healthCheck: () => Promise<void> = async () => {};
  /** What passes over each export's bytes found to be zero (zeros.ts), by export name; in memory only. */
  private readonly zeros = new Map<string, ZeroExtents>();

  constructor(private readonly options: RegistryOptions) {
    super();
  }

  private get state(): AgentState {
    return this.options.state;
  }

  /** Set by the snapshot manager, which owns snapshot health. */
  onReadError(check: () => Promise<void>): void {
    this.healthCheck = check;
  }

  // ---- publishing: called by the snapshot manager ---------------------------------------------

  /** Publishes the volumes of a snapshot; call inside the transaction that completes it. */
  publish(snapshotId: string, diskIds: readonly string[]): void {
    for (const diskId of diskIds) {
      this.state.exports.insert({ name: exportName(snapshotId, diskId), snapshotId, diskId, httpPath: consumePath(snapshotId, diskId) });
    }
  }

  /** Withdraws a snapshot's exports: servers close their connections before the snapshot goes. */
  withdraw(snapshotId: string): string[] {
    const names = this.state.exports.of(snapshotId).map((row) => row.name);
    this.state.exports.deleteOfSnapshot(snapshotId);
    for (const name of names) {
      this.zeros.delete(name);
      this.emit('removed', name);
    }
    return names;
  }

  /** The snapshot failed: its exports stay listed, but their reads fail from now on. */
  fail(snapshotId: string, reason: string): void {
    for (const row of this.state.exports.of(snapshotId)) this.emit('failed', row.name, reason);
  }

  addressesOf(snapshotId: string): ExportAddress[] {
    return this.state.exports.of(snapshotId).map((row) => ({
      name: row.name, httpPath: row.httpPath, snapshotId: row.snapshotId, trackedDiskId: row.diskId,
    }));
  }

  // ---- serving: what the doors ask ------------------------------------------------------------

  list(): Export[] {
    return this.state.exports.list().map((row) => this.get(row.name)).filter((x): x is Export => x !== undefined);
  }

  get(name: string): Export | undefined {
    const found = this.lookUp(name);
    if (found === undefined) return undefined;
    const { volume, failure } = found;
    const row = this.state.exports.get(name)!;
    const snapshot = this.state.snapshots.get(row.snapshotId)!;
    return {
      name, httpPath: row.httpPath, snapshotId: row.snapshotId, trackedDiskId: row.diskId,
      description: `snapshot ${row.snapshotId} of ${row.diskId} (${volume.originalPath}) taken ${snapshot.createdAt}`,
      sizeBytes: volume.sizeBytes,
      cbt: { generationId: volume.generationId, snapshotNumber: volume.snapshotNumber, blockSize: volume.cbtBlockSize, map: volume.cbtMap },
      failure,
      knownZeros: this.zerosOf(name),
    };
  }

  /** What is known to be zero in a served export's image; passes over its bytes add to it. NotFound when it is not served. */
  knownZeros(snapshotId: string, diskId: string): ZeroExtents {
    const name = exportName(snapshotId, diskId);
    if (this.lookUp(name) === undefined) throw notFound(`snapshot ${snapshotId} has no served volume of disk ${diskId}`);
    return this.zerosOf(name);
  }

  private zerosOf(name: string): ZeroExtents {
    let zeros = this.zeros.get(name);
    if (zeros === undefined) {
      zeros = new ZeroExtents();
      this.zeros.set(name, zeros);
    }
    return zeros;
  }

  async open(name: string): Promise<ImageReader> {
    const found = this.lookUp(name);
    if (found === undefined) throw new AgentError('not-found', `no export named ${name}`, { code: 'ENOENT' });
    return this.openVolume(found.volume, found.failure);
  }

  /** The REST door's way in: the same export, named by the route's snapshot and disk. */
  async openByVolume(snapshotId: string, diskId: string): Promise<ImageReader> {
    const found = this.lookUp(exportName(snapshotId, diskId));
    if (found !== undefined) return this.openVolume(found.volume, found.failure);
    const snapshot = this.state.snapshots.get(snapshotId);
    if (snapshot === undefined || snapshot.state === 'creating' || snapshot.state === 'deleting') throw notFound(`snapshot ${snapshotId} not found`);
    throw notFound(`snapshot ${snapshotId} has no volume of disk ${diskId}`);
  }

  /** A served export's volume and failure, or undefined when it is not served (unknown, or its snapshot is not live). */
  private lookUp(name: string): { volume: CapturedVolume; failure: string | null } | undefined {
    const row = this.state.exports.get(name);
    if (row === undefined) return undefined;
    const snapshot = this.state.snapshots.get(row.snapshotId);
    const volume = this.state.volumes.get(row.snapshotId, row.diskId);
    if (snapshot === undefined || volume === undefined || (snapshot.state !== 'ok' && snapshot.state !== 'failed')) return undefined;
    return { volume, failure: snapshot.state === 'failed' ? snapshot.failure ?? 'unknown' : null };
  }

  private async openVolume(volume: CapturedVolume, failure: string | null): Promise<ImageReader> {
    const { snapshotId } = volume;
    if (failure !== null) throw failedError(snapshotId, failure);
    const reader = await this.options.engine.openImage({
      original: { major: volume.originalMajor, minor: volume.originalMinor },
      image: { major: volume.imageMajor, minor: volume.imageMinor },
      path: volume.imagePath,
    });
    return guardReads(reader, async (_offset, _length, use) => {
      try {
        return await use();
      } catch (err) {
        // An image that fails reads has usually lost its snapstore: find out and say so, as
        // every later open will.
        if (errorCode(err) !== 'EIO') throw err;
        await this.healthCheck();
        const now = this.state.snapshots.get(snapshotId);
        if (now?.state === 'failed') throw failedError(snapshotId, now.failure ?? 'unknown');
        throw err;
      }
    });
  }
}

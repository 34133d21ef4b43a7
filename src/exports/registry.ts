// The export registry over the agent's database: exports are rows written with their snapshot
// and deleted with it (so a restarted agent serves exactly what it served before), and the
// lifecycle manager's events tell the servers when one fails or goes away.
import { EventEmitter } from 'node:events';
import type { AgentState } from '../db/state';
import type { ImageReader } from '../engine/types';
import { isAgentError } from '../core/errors';
import type { SnapshotManager } from '../snapshots/manager';
import type { Export, ExportRegistry, ExportRegistryEvents } from './types';

export class SqliteExportRegistry extends EventEmitter<ExportRegistryEvents> implements ExportRegistry {
  constructor(private readonly state: AgentState, private readonly manager: SnapshotManager) {
    super();
    manager.on('deleted', (_snapshotId, names) => names.forEach((name) => this.emit('removed', name)));
    manager.on('failed', (snapshotId, reason) => {
      for (const row of state.exportsOf(snapshotId)) this.emit('failed', row.name, reason);
    });
  }

  list(): Export[] {
    return this.state.exports().map((row) => this.get(row.name)).filter((x): x is Export => x !== undefined);
  }

  get(name: string): Export | undefined {
    const row = this.state.export(name);
    if (row === undefined) return undefined;
    const snapshot = this.state.snapshot(row.snapshotId);
    const volume = this.state.volume(row.snapshotId, row.diskId);
    if (snapshot === undefined || volume === undefined || (snapshot.state !== 'ok' && snapshot.state !== 'failed')) return undefined;
    return {
      name: row.name,
      snapshotId: row.snapshotId,
      trackedDiskId: row.diskId,
      httpPath: row.httpPath,
      description: `snapshot ${row.snapshotId} of ${row.diskId} (${volume.originalPath}) taken ${snapshot.createdAt}`,
      sizeBytes: volume.sizeBytes!,
      cbt: { generationId: volume.generationId!, snapshotNumber: volume.snapshotNumber!, blockSize: volume.cbtBlockSize!, map: volume.cbtMap! },
      failure: snapshot.state === 'failed' ? snapshot.failure ?? 'failed' : null,
    };
  }

  async open(name: string): Promise<ImageReader> {
    const found = this.get(name);
    if (found === undefined) throw Object.assign(new Error(`no export named ${name}`), { code: 'ENOENT' });
    try {
      return await this.manager.openImage(found.snapshotId, found.trackedDiskId);
    } catch (err) {
      // A failed snapshot answers reads with EIO, as the kernel does for its image.
      if (isAgentError(err, 'conflict')) throw Object.assign(new Error(err.message), { code: 'EIO' });
      throw err;
    }
  }
}

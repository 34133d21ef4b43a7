// One pull: a disk of a running agent copied to a local file or block device. The mode follows
// from the state file and what lies at the output:
// - full: no state and no output (or an empty file): every range of the image, zero ranges left
//   as holes;
// - incremental: the state's last complete copy is of the snapshot's CBT generation: only the
//   ranges changed since its snapshot number;
// - resync: anything else with an output in place (another generation, no state, a copy
//   interrupted in another mode): the agent's block digests against the local blocks', and only
//   the blocks that differ travel.
// Every mode ends with a verification of the whole copy against the agent's digests; blocks that
// differ are fetched again (unless repair is off) and must then match. The state file is
// checkpointed about once a second (after an fdatasync of the copy), so a pull that is killed
// resumes with the same snapshot (or, if that is gone, a mode that is still correct).
import { AgentError, conflict, isAgentError, notFound } from '../core/errors';
import { blockDigest, fetchDigests, localDigest, type BlockDigests } from './digests';
import { AgentClient, DEFAULT_RETRY, type Credentials, type RetryPolicy } from './http';
import { silentProgress, type Phase, type ProgressSink } from './progress';
import { mergeSpans, spanBytes, splitSpans, subtractSpans, type Span } from './ranges';
import { readState, writeState, type CopyPoint, type PullMode, type PullState } from './state';
import { inspectTarget, Target } from './target';

export const DEFAULT_PARALLEL = 4;
export const DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024;
/** The longest range one request fetches. */
const DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024;
/** Blocks per digest request: windows are asked for in parallel, and each one retried alone. */
const DIGEST_WINDOW_BLOCKS = 256;
const CHECKPOINT_MS = 1000;

export interface PullOptions {
  agent: string;
  disk: string;
  out: string;
  stateFile: string;
  /** Copy this existing snapshot (and leave it) instead of creating one. */
  snapshot?: string | undefined;
  credentials: Credentials;
  /** Requests in flight. */
  parallel: number;
  /** Digest block size: a power of two from 64 KiB to 64 MiB. */
  blockSize: number;
  /** Verification mismatches are fetched again (true) or an error (false). */
  repair: boolean;
  retry?: RetryPolicy;
  chunkSize?: number;
  progress?: ProgressSink;
  signal?: AbortSignal;
  /** Told what went wrong but did not fail the pull (a snapshot that could not be deleted). */
  warn?: (line: string) => void;
}

export interface PullSummary {
  type: 'summary';
  mode: PullMode;
  /** The pull went on from an interrupted one with the same snapshot. */
  resumed: boolean;
  agent: string;
  disk: string;
  out: string;
  snapshot_id: string;
  generation_id: string;
  snapshot_number: number;
  image_size: number;
  /** Image bytes received (repairs included). */
  bytes_fetched: number;
  /** Bytes not transferred because the agent said they are zeros. */
  bytes_zero: number;
  /** Bytes neither fetched nor zeroed: unchanged since the last copy (incremental) or equal digests (resync). */
  bytes_unchanged: number;
  /** Bytes fetched again after the verification found them different. */
  bytes_repaired: number;
  /** Bytes of digest answers received. */
  digest_bytes: number;
  blocks_verified: number;
  duration_seconds: number;
}

interface VolumeJson {
  snapshot_number: number;
  generation_id: string;
  size: number;
  original_device: { tracking_id: string };
}

interface SnapshotJson {
  snapshot_id: string;
  state: string;
  failure_reason?: string;
  volume_snapshots: VolumeJson[];
}

interface ChangesJson {
  backup_type: string;
  ranges: Array<{ start_offset: number; length: number; zero?: boolean }>;
}

interface Op {
  zero: boolean;
  span: Span;
}

/** Runs `work` on every item with at most `parallel` at once; the first failure stops the rest. */
async function inParallel<T>(items: Iterable<T>, parallel: number, work: (item: T) => Promise<void>): Promise<void> {
  const iterator = items[Symbol.iterator]();
  let failed = false;
  const worker = async (): Promise<void> => {
    for (let next = iterator.next(); !failed && next.done !== true; next = iterator.next()) {
      try {
        await work(next.value);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: parallel }, worker));
  const rejected = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (rejected !== undefined) throw rejected.reason;
}

const snapshotRoute = (id: string): string => `/snapshots/${encodeURIComponent(id)}`;

function checkHealthy(snapshot: SnapshotJson): void {
  if (snapshot.state === 'failed') throw conflict(`snapshot ${snapshot.snapshot_id} failed: ${snapshot.failure_reason ?? 'no reason given'}`);
}

export async function runPull(options: PullOptions): Promise<PullSummary> {
  const startedMs = Date.now();
  const progress = options.progress ?? silentProgress;
  const client = new AgentClient(options.agent, options.credentials, {
    connections: options.parallel + 1, retry: options.retry ?? DEFAULT_RETRY, signal: options.signal,
  });
  const { disk, out, stateFile } = options;
  const agent = client.base.href;
  try {
    const previous = readState(stateFile);
    if (previous !== null && (previous.agent !== agent || previous.disk !== disk)) {
      throw new AgentError('invalid', `state file ${stateFile} is the state of disk ${previous.disk} of ${previous.agent}: name another with --state`);
    }
    const getSnapshot = async (id: string): Promise<SnapshotJson | null> => {
      const answer = await client.request('GET', snapshotRoute(id));
      if (answer.status === 404) return null;
      if (answer.status !== 200) throw AgentClient.error(`GET ${snapshotRoute(id)}`, answer);
      return JSON.parse(answer.body.toString('utf8')) as SnapshotJson;
    };

    // The snapshot: the one named, the one an interrupted pull created, or a new one.
    const interrupted = previous?.in_progress ?? null;
    let snapshot: SnapshotJson | null = null;
    let owned = false;
    if (options.snapshot !== undefined) {
      snapshot = await getSnapshot(options.snapshot);
      if (snapshot === null) throw notFound(`snapshot ${options.snapshot} does not exist on ${agent}`);
    } else if (interrupted?.owned === true) {
      snapshot = await getSnapshot(interrupted.snapshot_id);
      owned = snapshot !== null;
    }
    if (snapshot === null) {
      snapshot = await client.json<SnapshotJson>('POST', '/snapshots', { tracked_disk_ids: [disk] }, false);
      owned = true;
    }
    const snapshotId = snapshot.snapshot_id;
    const deleteSnapshot = async (): Promise<void> => {
      try {
        await client.json('DELETE', snapshotRoute(snapshotId));
      } catch (err) {
        options.warn?.(`the snapshot ${snapshotId} could not be deleted: ${(err as Error).message}`);
      }
    };
    try {
      checkHealthy(snapshot);
      const summary = await copy(snapshot);
      if (owned) await deleteSnapshot();
      return summary;
    } catch (err) {
      // Kept for a resume when the network or the user stopped the pull; otherwise not left behind.
      if (owned && !isAgentError(err, 'unavailable') && !isAgentError(err, 'cancelled')) await deleteSnapshot();
      throw err;
    }

    async function copy(snap: SnapshotJson): Promise<PullSummary> {
      const volume = snap.volume_snapshots.find((v) => v.original_device.tracking_id === disk);
      if (volume === undefined) throw notFound(`snapshot ${snap.snapshot_id} has no volume of disk ${disk}`);
      const size = volume.size;
      const here: CopyPoint = { snapshot_id: snap.snapshot_id, generation_id: volume.generation_id, snapshot_number: volume.snapshot_number };
      const resumed = interrupted !== null && interrupted.snapshot_id === snap.snapshot_id && previous?.image_size === size;
      const complete = previous?.complete ?? null;
      const found = inspectTarget(out);
      let mode: PullMode;
      let base: CopyPoint | null = null;
      if (resumed) {
        mode = interrupted.mode;
        base = interrupted.base;
      } else {
        const sameGeneration = complete !== null && complete.generation_id === volume.generation_id && previous?.image_size === size
          && found !== null && (found.kind === 'device' || found.size === size);
        // An interrupted incremental from the same base left only changed ranges written: a new
        // incremental from that base covers them. Any other interrupted copy mixed snapshots.
        const leftover = interrupted === null || (interrupted.mode === 'incremental' && interrupted.base?.generation_id === complete?.generation_id
          && interrupted.base?.snapshot_number === complete?.snapshot_number);
        if (sameGeneration && leftover) {
          mode = 'incremental';
          base = complete;
        } else if (found !== null && (found.kind === 'device' || found.size > 0)) {
          mode = 'resync';
        } else {
          mode = 'full';
        }
      }
      let done: Span[] = resumed ? mergeSpans(interrupted.done) : [];
      const state: PullState = { version: 1, agent, disk, image_size: size, complete, in_progress: { ...here, owned, mode, base, done } };
      writeState(stateFile, state);

      const fresh = mode === 'full' && !resumed;
      const target = await Target.open(out, size, fresh);
      const counts = { fetched: 0, zero: 0, unchanged: 0, repaired: 0, digest: 0 };
      let phase: Phase = 'copy';
      let phaseDone = 0;
      let phaseTotal = 0;
      const report = (last = false): void => progress.report({ phase, mode, doneBytes: phaseDone, totalBytes: phaseTotal, fetchedBytes: counts.fetched }, last);

      // Checkpoints: what was written and synced goes into the state, about once a second.
      let pending: Span[] = [];
      let lastCheckpointMs = Date.now();
      let checkpointing: Promise<void> | null = null;
      const checkpoint = async (): Promise<void> => {
        const taken = pending;
        pending = [];
        lastCheckpointMs = Date.now();
        await target.sync();
        done = mergeSpans([...done, ...taken]);
        state.in_progress!.done = done;
        state.in_progress!.mode = mode;
        writeState(stateFile, state);
      };
      const maybeCheckpoint = async (): Promise<void> => {
        if (checkpointing !== null || Date.now() - lastCheckpointMs < CHECKPOINT_MS) return;
        checkpointing = checkpoint().finally(() => { checkpointing = null; });
        await checkpointing;
      };

      const digestsOf = async (): Promise<BlockDigests[]> => {
        const windowBytes = options.blockSize * DIGEST_WINDOW_BLOCKS;
        const windows: BlockDigests[] = [];
        const starts = Array.from({ length: Math.ceil(size / windowBytes) }, (_, i) => i * windowBytes);
        await inParallel(starts.entries(), options.parallel, async ([index, start]) => {
          windows[index] = await fetchDigests(client, snap.snapshot_id, disk, options.blockSize, start, Math.min(windowBytes, size - start), size);
          counts.digest += windows[index].wireBytes;
        });
        return windows;
      };
      /** The blocks of `windows` whose local digest differs, hashed `parallel` at a time; `hashed` counts bytes. */
      const differing = async (windows: BlockDigests[], only?: Set<number>): Promise<Op[]> => {
        const blocks: Array<{ window: BlockDigests; index: number; global: number }> = [];
        let global = 0;
        for (const window of windows) {
          for (let index = 0; index < window.count; index++, global++) if (only === undefined || only.has(global)) blocks.push({ window, index, global });
        }
        const found: Array<Op & { global: number }> = [];
        await inParallel(blocks, options.parallel, async ({ window, index, global: g }) => {
          const start = window.start + index * window.blockSize;
          const length = Math.min(window.blockSize, size - start);
          const local = await localDigest(target, start, length);
          if (!local.equals(blockDigest(window, index))) found.push({ zero: window.zero[index], span: [start, start + length], global: g });
          phaseDone += length;
          report();
        });
        return found.sort((a, b) => a.span[0] - b.span[0]);
      };
      const apply = async (ops: Op[], skip: Span[], onBytes: (op: Op, bytes: number) => void): Promise<void> => {
        const pieces = function* (): Generator<Op> {
          for (const op of ops) for (const span of splitSpans(subtractSpans([op.span], skip), options.chunkSize ?? DEFAULT_CHUNK_SIZE)) yield { zero: op.zero, span };
        };
        await inParallel(pieces(), options.parallel, async ({ zero, span }) => {
          const [start, end] = span;
          if (zero) {
            // A fresh file is all holes already.
            if (!(fresh && target.kind === 'file')) await target.zero(start, end - start);
          } else {
            await target.write(start, await client.readImage(snap.snapshot_id, disk, start, end));
          }
          onBytes({ zero, span }, end - start);
          pending.push(span);
          phaseDone += end - start;
          report();
          await maybeCheckpoint();
        });
      };

      try {
        // The plan.
        let ops: Op[] | null = null;
        let remote: BlockDigests[] | null = null;
        if (mode !== 'resync') {
          const query = base === null ? 'markZeroRanges=true'
            : `previousGenerationID=${encodeURIComponent(base.generation_id)}&previousNumber=${base.snapshot_number}&markZeroRanges=true`;
          const changes = await client.json<ChangesJson>('GET', `${snapshotRoute(snap.snapshot_id)}/changes/${encodeURIComponent(disk)}?${query}`);
          // The agent knows better than the state file: a full answer to an incremental question means another generation.
          if (mode === 'incremental' && changes.backup_type !== 'incremental') mode = 'resync';
          else ops = changes.ranges.map((r) => ({ zero: r.zero === true, span: [r.start_offset, r.start_offset + r.length] }));
        }
        if (ops === null) {
          phase = 'verify';
          phaseTotal = size;
          remote = await digestsOf();
          ops = await differing(remote);
          report(true);
        }
        counts.unchanged = size - spanBytes(ops.map((op) => op.span));
        phase = 'copy';
        phaseDone = 0;
        phaseTotal = spanBytes(ops.map((op) => op.span));
        report();
        await apply(ops, done, (op, bytes) => {
          if (op.zero) counts.zero += bytes;
          else counts.fetched += bytes;
        });
        await checkpoint();
        report(true);

        // The verification of the whole copy.
        phase = 'verify';
        phaseDone = 0;
        phaseTotal = size;
        remote ??= await digestsOf();
        const blocksVerified = remote.reduce((sum, window) => sum + window.count, 0);
        let mismatches = await differing(remote);
        report(true);
        if (mismatches.length > 0) {
          const first = mismatches[0].span;
          const what = `${mismatches.length} block(s) of ${options.blockSize} bytes differ from the agent's, the first at offset ${first[0]} (${first[1] - first[0]} bytes)`;
          if (!options.repair) throw new AgentError('internal', `verification failed: ${what}`);
          phase = 'repair';
          phaseDone = 0;
          phaseTotal = spanBytes(mismatches.map((op) => op.span));
          await apply(mismatches, [], (op, bytes) => {
            counts.repaired += bytes;
            if (!op.zero) counts.fetched += bytes;
          });
          await target.sync();
          report(true);
          const again = new Set((mismatches as Array<Op & { global: number }>).map((op) => op.global));
          mismatches = await differing(remote, again);
          if (mismatches.length > 0) {
            const [start, end] = mismatches[0].span;
            throw new AgentError('internal', `verification failed after repair: the block at offset ${start} (${end - start} bytes) still differs from the agent's`);
          }
        }
        await target.sync();
        writeState(stateFile, { version: 1, agent, disk, image_size: size, complete: { ...here, completed_at: new Date().toISOString() }, in_progress: null });
        progress.end();
        return {
          type: 'summary', mode, resumed, agent, disk, out, ...here, image_size: size,
          bytes_fetched: counts.fetched, bytes_zero: counts.zero, bytes_unchanged: counts.unchanged, bytes_repaired: counts.repaired,
          digest_bytes: counts.digest, blocks_verified: blocksVerified, duration_seconds: (Date.now() - startedMs) / 1000,
        };
      } catch (err) {
        // What was written is good: keep it for the resume.
        await (checkpointing ?? Promise.resolve()).catch(() => {});
        await checkpoint().catch(() => {});
        progress.end();
        throw err;
      } finally {
        await target.close();
      }
    }
  } finally {
    client.close();
  }
}

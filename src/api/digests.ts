// GET|HEAD .../digests/{disk}: the SHA-256 of each block of a snapshot image (or of a window of
// it), and whether each block is all zeros; and the changes route's zero marking. Both read the
// image through the registry (a failed snapshot is 409, as for consume) under the read-rate
// limits; the computation is exports/digests.ts. The format is docs/digests.md:
// - application/x-ndjson (also for no Accept, or */*): a header line, then one line per block;
// - application/vnd.coriolis.digests: the same header line, then 33 bytes per block, the digest
//   and a flags byte (bit 0: all zeros).
// Lines are sent in batches, and a batch goes out whenever the next block is not ready yet, so
// a slow pass (a rate limit) still shows its progress. The status and headers go with the first
// block: a read error before it is an ordinary error answer, after it the connection is cut.
import type { ServerResponse } from 'node:http';
import type { RouterMiddleware } from '@koa/router';
import { throttle, type Connection, type ReadLimits } from '../doors/limits';
import {
  DIGEST_ALGORITHM, digestBlocks, markZeroRanges, passDepth, type BlockDigest, type DigestWindow, digestWindow,
} from '../exports/digests';
import { recycleReadBuffer } from '../native/reader';
import type { SnapshotChanges } from '../snapshots/types';
import { HttpError } from './errors';
import { parseDigestQuery } from './params';
import type { AgentService } from './service';
import { clientGone, drained } from './stream';

export const NDJSON_TYPE = 'application/x-ndjson';
export const BINARY_DIGESTS_TYPE = 'application/vnd.coriolis.digests';
/** The flags byte of the binary format. */
export const ZERO_BLOCK_FLAG = 1;

/** A batch of lines goes out once it holds this much, even if more blocks are ready. */
const BATCH_BYTES = 64 * 1024;
/** Reads of the zero-marking pass. */
const ZERO_MARKING_READ_SIZE = 4 * 1024 * 1024;

interface DigestHeader {
  snapshot_id: string;
  tracked_disk_id: string;
  algorithm: string;
  block_size: number;
  start: number;
  length: number;
  image_size: number;
}

export function digestHeader(snapshotId: string, trackedDiskId: string, window: DigestWindow, imageSize: number): DigestHeader {
  return {
    snapshot_id: snapshotId, tracked_disk_id: trackedDiskId, algorithm: DIGEST_ALGORITHM,
    block_size: window.blockSize, start: window.start, length: window.length, image_size: imageSize,
  };
}

const encoders: Record<string, (block: BlockDigest) => Buffer> = {
  [NDJSON_TYPE]: (block) => Buffer.from(`${JSON.stringify({
    offset: block.offset, length: block.length, digest: block.digest.toString('hex'), zero: block.zero,
  })}\n`),
  [BINARY_DIGESTS_TYPE]: (block) => {
    const record = Buffer.allocUnsafe(block.digest.length + 1);
    block.digest.copy(record);
    record[block.digest.length] = block.zero ? ZERO_BLOCK_FLAG : 0;
    return record;
  },
};

export function digestRoute(service: AgentService, limits: ReadLimits | undefined): RouterMiddleware {
  return async (ctx) => {
    const request = parseDigestQuery(ctx.query);
    const type = ctx.accepts(NDJSON_TYPE, BINARY_DIGESTS_TYPE);
    if (type === false) {
      throw new HttpError(406, 'Not Acceptable', `digests are served as ${NDJSON_TYPE} or ${BINARY_DIGESTS_TYPE}; the Accept header allows neither`);
    }
    const { snapshotId, diskId } = ctx.params;
    const reader = throttle(await service.openImage(snapshotId, diskId), ctx.req.socket, limits);
    try {
      const window = digestWindow(request, reader.size);
      const zeros = service.knownZeros(snapshotId, diskId);
      ctx.status = 200;
      ctx.set({ 'Content-Type': type, 'Cache-Control': 'no-store' });
      if (ctx.method === 'HEAD') return;
      ctx.respond = false;
      const res = ctx.res;
      const encode = encoders[type];
      const pass = digestBlocks(reader, window, zeros, { depth: passDepth(window.blockSize) });
      let batch: Buffer[] = [Buffer.from(`${JSON.stringify(digestHeader(snapshotId, diskId, window, reader.size))}\n`)];
      let batchBytes = 0;
      let blocksInBatch = 0;
      const flush = async (): Promise<void> => {
        const data = Buffer.concat(batch);
        batch = [];
        batchBytes = 0;
        blocksInBatch = 0;
        if (!res.write(data)) await drained(res);
      };
      try {
        for (;;) {
          // Nothing waits in a batch while the next block is still being read.
          if (blocksInBatch > 0 && !pass.nextReady) await flush();
          const block = await pass.next();
          if (block === undefined) break;
          if (res.destroyed) throw clientGone();
          const record = encode(block);
          batch.push(record);
          batchBytes += record.length;
          blocksInBatch++;
          if (batchBytes >= BATCH_BYTES) await flush();
        }
        if (batch.length > 0) await flush();
      } finally {
        // The reader may only close once no read is using it.
        await pass.close();
      }
      res.end();
    } finally {
      await reader.close();
    }
  };
}

/** A signal that aborts when `res` closes before its answer is complete: the client went away. */
function closedEarly(res: ServerResponse): { signal: AbortSignal; done: () => void } {
  const controller = new AbortController();
  const onClose = (): void => {
    if (!res.writableFinished) controller.abort(clientGone());
  };
  res.once('close', onClose);
  return { signal: controller.signal, done: () => res.off('close', onClose) };
}

/**
 * `changes` with each range split where the image switches between all zeros and data, at CBT
 * block granularity (changes?markZeroRanges=true). Blocks already known to be zero are not read.
 */
export async function markZeroChanges(service: AgentService, changes: SnapshotChanges, res: ServerResponse, connection: Connection,
  limits: ReadLimits | undefined): Promise<SnapshotChanges> {
  const reader = throttle(await service.openImage(changes.snapshotId, changes.trackedDiskId), connection, limits);
  const watch = closedEarly(res);
  try {
    const ranges = await markZeroRanges(reader, changes.ranges, changes.cbtBlockSize, service.knownZeros(changes.snapshotId, changes.trackedDiskId), {
      depth: passDepth(ZERO_MARKING_READ_SIZE), readSize: ZERO_MARKING_READ_SIZE, release: recycleReadBuffer, signal: watch.signal,
    });
    return { ...changes, ranges };
  } finally {
    watch.done();
    await reader.close();
  }
}

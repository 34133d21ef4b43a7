// Turns a CBT map into the byte ranges a client must copy to bring its backup from an earlier
// snapshot (previousGenerationId, previousNumber) up to this one.
//
// Each map byte is the number of the snapshot that first saw its block changed within the
// generation (0: unchanged since tracking began). A block changed after snapshot p exactly when
// p < stamp <= current. Anything that cannot be answered that way, such as an unknown or
// different generation (re-tracking, resize, the 255 wrap) or a baseline of 0, gets a full copy.
// A baseline newer than this snapshot in its own generation cannot exist: it is refused, since
// any answer would hide a client that mixed up its snapshots. Blocks of the device past the end
// of the map (a disk that grew under a map that did not) count as changed: nothing proves them
// clean, and skipping them would leave stale bytes in the copy.
//
// The REST changes route and the NBD dirty-bitmap contexts both answer from this rule.
import { invalid } from '../core/errors';

export interface ChangedRange {
  offset: number;
  length: number;
}

export interface ChangesQuery {
  /** The CBT map captured with the snapshot. */
  map: Uint8Array;
  /** Bytes per map entry; the last entry may cover less than a block. */
  blockSize: number;
  deviceSize: number;
  generationId: string;
  snapshotNumber: number;
  previousGenerationId?: string | undefined;
  previousNumber?: number | undefined;
}

export interface Changes {
  backupType: 'full' | 'incremental';
  ranges: ChangedRange[];
}

/** The rule itself: was `block` changed after snapshot `since`, as of snapshot `current`? */
export function changedSince(map: Uint8Array, block: number, since: number, current: number): boolean {
  if (block >= map.length) return true;
  const stamp = map[block];
  return stamp > since && stamp <= current;
}

const SKIP = 4096;
const runs = new Map<number, Uint8Array>();
/** SKIP bytes of one stamp, to compare whole stretches of a run at once. */
function runOf(stamp: number): Uint8Array {
  let run = runs.get(stamp);
  if (run === undefined) {
    run = new Uint8Array(SKIP).fill(stamp);
    runs.set(stamp, run);
  }
  return run;
}

export function computeChanges(query: ChangesQuery): Changes {
  const { map, blockSize, deviceSize, snapshotNumber: current } = query;
  const previous = query.previousNumber ?? 0;
  if (query.previousGenerationId === query.generationId && previous > current) {
    throw invalid(`previousNumber ${previous} is newer than this snapshot, number ${current} of generation ${query.generationId}`);
  }
  const incremental = previous > 0 && query.previousGenerationId === query.generationId;
  if (!incremental) {
    return { backupType: 'full', ranges: deviceSize > 0 ? [{ offset: 0, length: deviceSize }] : [] };
  }

  // One lookup per block instead of two comparisons; and when the changed blocks all carry
  // one stamp (the usual "since the previous snapshot"), unchanged stretches are skipped with a
  // native byte search. Both keep an 8 Mi-block map well under 50 ms.
  const isChange = new Uint8Array(256);
  isChange.fill(1, previous + 1, current + 1);
  const singleStamp = previous + 1 === current;
  const ranges: ChangedRange[] = [];
  // A Buffer view of the map, for its native byte search.
  const bytes = Buffer.from(map.buffer, map.byteOffset, map.byteLength);
  const deviceBlocks = Math.ceil(deviceSize / blockSize);
  const blocks = Math.min(map.length, deviceBlocks);
  let runStart = -1;
  // Blocks in a row that were all changed or all unchanged. Native searches pay off only across
  // long stretches, so they wait for a streak.
  let streak = 0;
  for (let i = 0; i < blocks; i++) {
    if (singleStamp && streak >= 64) {
      streak = 0;
      if (runStart < 0) {
        const next = bytes.indexOf(current, i);
        if (next < 0 || next >= blocks) break;
        i = next;
      } else {
        while (i + SKIP <= blocks && Buffer.compare(map.subarray(i, i + SKIP), runOf(current)) === 0) i += SKIP;
        if (i >= blocks) break;
      }
    }
    const changed = isChange[map[i]] === 1;
    if (changed === runStart >= 0) {
      streak++;
    } else if (changed) {
      runStart = i;
      streak = 0;
    } else {
      ranges.push({ offset: runStart * blockSize, length: (i - runStart) * blockSize });
      runStart = -1;
      streak = 0;
    }
  }
  // Blocks the map does not cover are changed (see above): they extend or follow the last run.
  if (blocks < deviceBlocks && runStart < 0) runStart = blocks;
  if (runStart >= 0) {
    // The last run may end in the partial last block: clamp it to the device.
    const offset = runStart * blockSize;
    ranges.push({ offset, length: deviceSize - offset });
  }
  return { backupType: 'incremental', ranges };
}

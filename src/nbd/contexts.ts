// Metadata contexts an export offers to NBD_CMD_BLOCK_STATUS:
//
// - base:allocation: every byte of a snapshot image is allocated data (never a hole); extents
//   that a pass over the image's bytes found to be all zeros (a digest pass or a zero-marking
//   changes query, kept with the export: exports/zeros.ts) have NBD_STATE_ZERO, the rest 0.
//   Both are always correct: what is not known to be zero is not claimed to be.
// - qemu:dirty-bitmap:since-<p>, for each earlier snapshot p = 1..n-1 of the export's CBT
//   generation (n being the export's own snapshot number): flag 1 (dirty) on the blocks
//   changed after snapshot p, by the one rule of snapshots/changes.ts (which REST's changes
//   route answers from too). The CBT block is the granularity.
import type { Export } from '../exports/types';
import { changedSince } from '../snapshots/changes';
import {
  AllocationState, BASE_ALLOCATION_CONTEXT, BASE_NAMESPACE, DirtyState, MAX_EXTENTS_PER_CHUNK, QEMU_DIRTY_BITMAP_PREFIX, QEMU_NAMESPACE,
  type Extent,
} from './wire';

const SINCE_PREFIX = `${QEMU_DIRTY_BITMAP_PREFIX}since-`;

export type MetaContext =
  | { name: string; kind: 'allocation' }
  | { name: string; kind: 'dirty'; sinceSnapshot: number };

/** Every context of the export, base:allocation first, then the bitmaps oldest first. */
export function exportContexts(exported: Export): MetaContext[] {
  const contexts: MetaContext[] = [{ name: BASE_ALLOCATION_CONTEXT, kind: 'allocation' }];
  for (let since = 1; since < exported.cbt.snapshotNumber; since++) {
    contexts.push({ name: `${SINCE_PREFIX}${since}`, kind: 'dirty', sinceSnapshot: since });
  }
  return contexts;
}

/**
 * NBD_OPT_LIST_META_CONTEXT: all contexts for no query; otherwise those a query names exactly
 * or covers as a namespace wildcard ("base:", "qemu:", "qemu:dirty-bitmap:"). Queries of other
 * namespaces match nothing, as the protocol requires.
 */
export function listContexts(exported: Export, queries: readonly string[]): MetaContext[] {
  const all = exportContexts(exported);
  if (queries.length === 0) return all;
  const matches = (context: MetaContext, query: string): boolean =>
    context.name === query ||
    (query === BASE_NAMESPACE && context.kind === 'allocation') ||
    ((query === QEMU_NAMESPACE || query === QEMU_DIRTY_BITMAP_PREFIX) && context.kind === 'dirty');
  return all.filter((context) => queries.some((query) => matches(context, query)));
}

/** NBD_OPT_SET_META_CONTEXT: only exact names select; wildcards and unknown names are ignored. */
export function selectContexts(exported: Export, queries: readonly string[]): MetaContext[] {
  return exportContexts(exported).filter((context) => queries.includes(context.name));
}

/**
 * The extents of [offset, offset + length) in one context; the caller has checked that the
 * range lies within the export and is not empty. At most `maxExtents` descriptors, each within
 * the range, so a REQ_ONE reply (maxExtents 1) never exceeds the request.
 */
export function contextExtents(context: MetaContext, exported: Export, offset: number, length: number,
  maxExtents = MAX_EXTENTS_PER_CHUNK): Extent[] {
  if (context.kind === 'allocation') return allocationExtents(exported, offset, offset + length, maxExtents);
  return dirtyExtents(exported, context.sinceSnapshot, offset, offset + length, maxExtents);
}

function allocationExtents(exported: Export, start: number, end: number, maxExtents: number): Extent[] {
  const extents: Extent[] = [];
  for (let position = start; position < end && extents.length < maxExtents;) {
    const state = exported.knownZeros.stateAt(position);
    const stop = Math.min(state.end, end);
    extents.push({ length: stop - position, flags: state.zero ? AllocationState.ZERO : 0 });
    position = stop;
  }
  return extents;
}

function dirtyExtents(exported: Export, since: number, start: number, end: number, maxExtents: number): Extent[] {
  const { map, blockSize, snapshotNumber } = exported.cbt;
  const isDirty = (block: number): boolean => changedSince(map, block, since, snapshotNumber);
  const extents: Extent[] = [];
  let position = start;
  while (position < end && extents.length < maxExtents) {
    let block = Math.floor(position / blockSize);
    const dirty = isDirty(block);
    do block++; while (block * blockSize < end && isDirty(block) === dirty);
    const stop = Math.min(block * blockSize, end);
    extents.push({ length: stop - position, flags: dirty ? DirtyState.DIRTY : 0 });
    position = stop;
  }
  return extents;
}

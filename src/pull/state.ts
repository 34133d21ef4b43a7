// The pull's state file: what the local copy holds (the agent, disk, CBT generation and number
// of the last complete copy, the image size) and, while a pull runs, which ranges of its
// snapshot are already written. Written atomically (temporary file, fsync, rename, fsync of the
// folder), so that a pull killed at any moment leaves either the old state or the new one.
import fs from 'node:fs';
import path from 'node:path';
import { AgentError } from '../core/errors';
import type { Span } from './ranges';

export type PullMode = 'full' | 'incremental' | 'resync';

export interface CopyPoint {
  snapshot_id: string;
  generation_id: string;
  snapshot_number: number;
}

export interface PullState {
  version: 1;
  /** The agent's API root and the tracked disk id. */
  agent: string;
  disk: string;
  image_size: number;
  /** The last copy that completed and verified; null before the first. */
  complete: (CopyPoint & { completed_at: string }) | null;
  /** A pull under way (or interrupted): its snapshot, its mode, and the byte ranges written and synced. */
  in_progress: (CopyPoint & { owned: boolean; mode: PullMode; base: CopyPoint | null; done: Span[] }) | null;
}

const isCopyPoint = (value: unknown): value is CopyPoint => typeof value === 'object' && value !== null
  && typeof (value as CopyPoint).snapshot_id === 'string' && typeof (value as CopyPoint).generation_id === 'string'
  && Number.isInteger((value as CopyPoint).snapshot_number);

const isSpans = (value: unknown): value is Span[] => Array.isArray(value)
  && value.every((span) => Array.isArray(span) && span.length === 2 && span.every((n) => Number.isSafeInteger(n) && (n as number) >= 0));

function checkState(value: unknown): value is PullState {
  const state = value as PullState;
  if (typeof value !== 'object' || value === null || state.version !== 1) return false;
  if (typeof state.agent !== 'string' || typeof state.disk !== 'string' || !Number.isSafeInteger(state.image_size)) return false;
  if (state.complete !== null && !isCopyPoint(state.complete)) return false;
  const progress = state.in_progress;
  if (progress === null) return true;
  return isCopyPoint(progress) && typeof progress.owned === 'boolean' && ['full', 'incremental', 'resync'].includes(progress.mode)
    && (progress.base === null || isCopyPoint(progress.base)) && isSpans(progress.done);
}

/** The state in `file`, or null when there is none; a file that is not a pull state is refused (invalid). */
export function readState(file: string): PullState | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return null;
    throw new AgentError('invalid', `state file ${file}: ${(err as Error).message}`, { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AgentError('invalid', `state file ${file} is not JSON: not a pull state (remove it, or name another with --state)`);
  }
  if (!checkState(value)) throw new AgentError('invalid', `state file ${file} is not a pull state (remove it, or name another with --state)`);
  return value;
}

export function writeState(file: string, state: PullState): void {
  const temporary = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(temporary, 'w', 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify(state)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temporary, file);
  const dir = fs.openSync(path.dirname(file), 'r');
  try {
    fs.fsyncSync(dir);
  } finally {
    fs.closeSync(dir);
  }
}

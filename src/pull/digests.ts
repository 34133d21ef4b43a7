// Block digests, the agent's and the local copy's: the binary answer of GET .../digests/{disk}
// (a JSON header line, then 33 bytes per block: SHA-256, then flags with bit 0 = all zeros),
// and SHA-256 of the same blocks of the local copy, hashed off the event loop.
import { webcrypto } from 'node:crypto';
import { AgentError } from '../core/errors';
import { AgentClient } from './http';
import type { Target } from './target';

export const DIGEST_TYPE = 'application/vnd.coriolis.digests';
const DIGEST_BYTES = 32;
const RECORD_BYTES = DIGEST_BYTES + 1;
const ZERO_FLAG = 1;

export interface BlockDigests {
  /** The first block's offset; blocks are blockSize long but for the image's last. */
  start: number;
  blockSize: number;
  count: number;
  /** 32 bytes per block. */
  digests: Buffer;
  zero: boolean[];
  /** What the answer weighed on the wire (header included). */
  wireBytes: number;
}

export const blockDigest = (digests: BlockDigests, index: number): Buffer => digests.digests.subarray(index * DIGEST_BYTES, (index + 1) * DIGEST_BYTES);

/** The agent's digests of the blocks in [start, start + length) of the image. */
export async function fetchDigests(client: AgentClient, snapshotId: string, disk: string, blockSize: number, start: number, length: number,
  imageSize: number): Promise<BlockDigests> {
  const route = `/snapshots/${encodeURIComponent(snapshotId)}/digests/${encodeURIComponent(disk)}?block_size=${blockSize}&start=${start}&length=${length}`;
  const answer = await client.request('GET', route, { headers: { accept: DIGEST_TYPE } });
  if (answer.status !== 200) throw AgentClient.error(`GET ${route}`, answer);
  const body = answer.body;
  const newline = body.indexOf(0x0a);
  const bad = (why: string): AgentError => new AgentError('internal', `GET ${route}: not a digest answer: ${why}`);
  if (newline < 0) throw bad('no header line');
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(body.subarray(0, newline).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('the header is not JSON');
  }
  if (header.algorithm !== 'sha256') throw bad(`algorithm ${JSON.stringify(header.algorithm)}, this client knows sha256`);
  for (const [key, expected] of [['block_size', blockSize], ['start', start], ['length', length], ['image_size', imageSize]] as const) {
    if (header[key] !== expected) throw bad(`${key} is ${JSON.stringify(header[key])}, expected ${expected}`);
  }
  const count = Math.ceil(length / blockSize);
  const records = body.subarray(newline + 1);
  if (records.length !== count * RECORD_BYTES) throw bad(`${records.length} bytes of records for ${count} blocks`);
  const digests = Buffer.alloc(count * DIGEST_BYTES);
  const zero: boolean[] = [];
  for (let i = 0; i < count; i++) {
    records.copy(digests, i * DIGEST_BYTES, i * RECORD_BYTES, i * RECORD_BYTES + DIGEST_BYTES);
    zero.push((records[i * RECORD_BYTES + DIGEST_BYTES] & ZERO_FLAG) !== 0);
  }
  return { start, blockSize, count, digests, zero, wireBytes: body.length };
}

/** SHA-256 of one block of the local copy (a hole reads as zeros). */
export async function localDigest(target: Target, offset: number, length: number): Promise<Buffer> {
  const bytes = await target.read(offset, length);
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', bytes));
}

// Validation of query parameters and request bodies, kept apart from dispatch: each function
// takes what the client sent and returns typed values or throws Invalid (400) saying what is
// wrong. Where the original agent silently guessed (unknown booleans -> false, a bad
// previousNumber -> 0, a bad UUID -> 500), we refuse (agent-reference 11.36, 11.38).
import type { ParsedUrlQuery } from 'node:querystring';
import type { DiskListOptions } from '../inventory/types';
import type { ChangesRequest } from '../snapshots/types';
import { invalid } from '../core/errors';
import { MAX_DIGEST_BLOCK_SIZE, MIN_DIGEST_BLOCK_SIZE, type DigestRequest } from '../exports/digests';

/** One value of a query parameter; undefined when absent or empty (Go's default for both). */
function single(query: ParsedUrlQuery, name: string): string | undefined {
  const value = query[name];
  if (Array.isArray(value)) throw invalid(`query parameter ${name} is given ${value.length} times; give it once`);
  return value === undefined || value === '' ? undefined : value;
}

// Go's strconv.ParseBool; the Python client sends True/False.
const TRUE_WORDS = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const FALSE_WORDS = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

export function parseBoolean(query: ParsedUrlQuery, name: string, fallback: boolean): boolean {
  const value = single(query, name);
  if (value === undefined) return fallback;
  if (TRUE_WORDS.has(value)) return true;
  if (FALSE_WORDS.has(value)) return false;
  throw invalid(`query parameter ${name} must be a boolean (true/false, True/False, 1/0, t/f), got ${JSON.stringify(value)}`);
}

export function parseDiskListQuery(query: ParsedUrlQuery): DiskListOptions {
  return {
    includeVirtual: parseBoolean(query, 'includeVirtual', false),
    includeSwap: parseBoolean(query, 'includeSwap', false),
  };
}

const MAX_SNAPSHOT_NUMBER = 2 ** 32 - 1;
// The forms Go's uuid.Parse accepts: canonical, braced, urn:uuid:, and 32 bare hex digits.
const UUID_FORMS = /^(?:urn:uuid:)?\{?([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})\}?$/i;

/** The canonical lower-case form, so a client's upper-case copy still compares equal. */
export function parseUuid(value: string, what: string): string {
  const match = UUID_FORMS.exec(value);
  const braced = value.includes('{') || value.includes('}');
  if (match === null || (braced && !(value.startsWith('{') && value.endsWith('}')))) {
    throw invalid(`${what} must be a UUID such as 80564045-085a-4b1c-82d4-7410bce63d4a, got ${JSON.stringify(value)}`);
  }
  return match.slice(1).join('-').toLowerCase();
}

export function parseChangesQuery(query: ParsedUrlQuery): ChangesRequest {
  const request: ChangesRequest = {};
  const generation = single(query, 'previousGenerationID');
  if (generation !== undefined) request.previousGenerationId = parseUuid(generation, 'query parameter previousGenerationID');
  const number = single(query, 'previousNumber');
  if (number !== undefined) {
    if (!/^\d+$/.test(number) || Number(number) > MAX_SNAPSHOT_NUMBER) {
      throw invalid(`query parameter previousNumber must be an integer from 0 to ${MAX_SNAPSHOT_NUMBER}, got ${JSON.stringify(number)}`);
    }
    request.previousNumber = Number(number);
  }
  return request;
}

/** changes?markZeroRanges: split the ranges where the image switches between zeros and data. */
export const parseMarkZeroRanges = (query: ParsedUrlQuery): boolean => parseBoolean(query, 'markZeroRanges', false);

/** A byte count in decimal digits, at least `min`; undefined when absent. */
function byteCount(query: ParsedUrlQuery, name: string, min: number): number | undefined {
  const value = single(query, name);
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(number) || number < min) {
    throw invalid(`query parameter ${name} must be an integer number of bytes from ${min} to ${Number.MAX_SAFE_INTEGER}, got ${JSON.stringify(value)}`);
  }
  return number;
}

/** The digests route's window, as far as it can be checked without the image (exports/digests.ts checks the rest). */
export function parseDigestQuery(query: ParsedUrlQuery): DigestRequest {
  const blockSize = byteCount(query, 'block_size', 0);
  if (blockSize !== undefined && (blockSize < MIN_DIGEST_BLOCK_SIZE || blockSize > MAX_DIGEST_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0)) {
    throw invalid(`query parameter block_size must be a power of two from ${MIN_DIGEST_BLOCK_SIZE} to ${MAX_DIGEST_BLOCK_SIZE}, got ${blockSize}`);
  }
  return { blockSize, start: byteCount(query, 'start', 0), length: byteCount(query, 'length', 1) };
}

/** A decoded body: a JSON object, or the fields of a form. */
export type BodyFields = Record<string, unknown>;

/**
 * The value of `name`, matched as Go's encoding/json does: ignoring case. Unknown keys are
 * ignored, as there. Two spellings of one field are refused: Go would silently take the last,
 * and which one the client meant is anyone's guess.
 */
function field(body: BodyFields, name: string): unknown {
  const keys = Object.keys(body).filter((candidate) => candidate.toLowerCase() === name.toLowerCase());
  if (keys.length > 1) throw invalid(`field ${name} is given more than once, as ${keys.map((key) => JSON.stringify(key)).join(' and ')}`);
  return keys.length === 0 ? undefined : body[keys[0]];
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `string ${JSON.stringify(value)}`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return `${typeof value} ${value.toString()}`;
  return typeof value === 'object' ? 'an object' : typeof value;
}

function requiredString(body: BodyFields, name: string): string {
  const value = field(body, name);
  if (value === undefined) throw invalid(`field ${name} is required`);
  if (typeof value !== 'string' || value === '') throw invalid(`field ${name} must be a non-empty string, got ${describe(value)}`);
  return value;
}

export function parseCreateSnapshotBody(body: BodyFields): string[] {
  const ids = field(body, 'tracked_disk_ids');
  if (ids === undefined) throw invalid('field tracked_disk_ids is required: a list of tracked disk ids such as ["vda"]');
  if (!Array.isArray(ids)) throw invalid(`field tracked_disk_ids must be a list of tracked disk ids, got ${describe(ids)}`);
  if (ids.length === 0) throw invalid('field tracked_disk_ids is empty: name at least one tracked disk');
  const seen = new Set<string>();
  ids.forEach((id: unknown, index) => {
    if (typeof id !== 'string' || id === '') throw invalid(`tracked_disk_ids[${index}] must be a non-empty string, got ${describe(id)}`);
    if (seen.has(id)) throw invalid(`tracked_disk_ids lists ${JSON.stringify(id)} more than once`);
    seen.add(id);
  });
  return ids as string[];
}

export interface CreateMappingRequest {
  trackedDiskId: string;
  locationPath: string;
}

export function parseCreateMappingBody(body: BodyFields): CreateMappingRequest {
  return {
    trackedDiskId: requiredString(body, 'tracked_disk_id'),
    locationPath: requiredString(body, 'snapstore_location_id'),
  };
}

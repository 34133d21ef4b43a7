// A pull against a whole agent on the simulated engine (test/e2e/helpers.ts): the options it
// needs, disk writes between snapshots, and what the copy must equal.
import fs from 'node:fs';
import path from 'node:path';
import type { E2eAgent } from '../e2e/helpers';
import { runPull, type PullOptions, type PullSummary } from '../../src/pull/pull';

export const MiB = 1024 * 1024;

export function credentials(certs: string): PullOptions['credentials'] {
  const read = (name: string): string => fs.readFileSync(path.join(certs, name), 'utf8');
  return { ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem') };
}

/** runPull of disk0 (unless told) into DIR/copy.img, with fast retries. */
export function pull(e2e: E2eAgent, options: Partial<PullOptions> = {}): Promise<PullSummary> {
  const out = options.out ?? path.join(e2e.dir, 'copy.img');
  return runPull({
    agent: e2e.agent.apiUrl, disk: 'disk0', out, stateFile: `${out}.pull-state.json`, credentials: credentials(e2e.certs),
    parallel: 4, blockSize: 1 * MiB, repair: true, retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 100 }, ...options,
  });
}

/** The copy equals the disk file byte for byte (nobody writes it between the snapshot and the check). */
export function sameBytes(copy: string, disk: string): boolean {
  return fs.readFileSync(copy).equals(fs.readFileSync(disk));
}

/** Blocks of 512 bytes the file occupies on its filesystem. */
export const allocatedBytes = (file: string): number => fs.statSync(file).blocks * 512;

// `pull`: copies one disk of a running agent to a local file or block device (src/pull/). This
// file is the command line: options, certificates, progress on the terminal or as JSON lines,
// the summary, and Ctrl-C (the pull stops, keeps its snapshot and state, and resumes next time).
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { AgentError } from '../core/errors';
import { DEFAULT_BLOCK_SIZE, DEFAULT_PARALLEL, runPull } from '../pull/pull';
import { barProgress, jsonProgress } from '../pull/progress';
import { inspectTarget } from '../pull/target';
import { UsageError } from './usage';

export const PULL_USAGE = `usage: coriolis-snapshot-agent pull --agent URL --disk ID --out PATH [--snapshot ID] [--state FILE]
           [--certs DIR | --ca FILE --cert FILE --key FILE] [--parallel N] [--block-size BYTES] [--no-repair] [--json]
  --agent URL         the agent's API, https://HOST:PORT (with or without /api/v1)
  --disk ID           the tracked disk to copy (its id in /api/v1/disks)
  --out PATH          the local copy: a regular file (created if missing; zero ranges stay holes)
                      or a block device at least as large as the disk
  --snapshot ID       copy this existing snapshot and leave it; by default the pull creates a
                      snapshot and deletes it at the end
  --state FILE        what the copy holds, for the next pull (default PATH.pull-state.json;
                      required for a block device)
  --certs DIR         ca-cert.pem, client-cert.pem and client-key.pem, as gen-certs writes them
  --ca, --cert, --key the same three files named one by one (instead of --certs)
  --parallel N        requests in flight, 1 to 64 (default ${DEFAULT_PARALLEL})
  --block-size BYTES  digest block size for resync and verification: a power of two from 65536
                      to 67108864, with an optional K, M suffix (default 4M)
  --no-repair         a block that fails verification is an error instead of being fetched again
  --json              progress as JSON lines even on a terminal
Modes: full (no state, no output), incremental (the state's last copy is of the snapshot's CBT
generation), resync (anything else: only blocks whose digests differ travel); each ends with a
verification of the whole copy against the agent's digests. An interrupted pull resumes.
Output: progress on a terminal, JSON lines otherwise; then one JSON summary line on stdout.
Exit status: 0 copied and verified, 1 failed (a failed snapshot, the agent unreachable after
retries, a verification that fails), 2 bad usage, certificates or state file.`;

const MIN_BLOCK = 64 * 1024;
const MAX_BLOCK = 64 * 1024 * 1024;

function parseSize(value: string, option: string): number {
  const match = /^(\d+)([KMG]?)$/i.exec(value);
  if (match === null) throw new UsageError(`${option} must be a number of bytes (with an optional K, M or G), got ${JSON.stringify(value)}`);
  const factor = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[match[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(match[1]) * factor;
}

function parseInteger(value: string, option: string, min: number, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(`${option} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

function readCredential(file: string, option: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new AgentError('invalid', `${option} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

export async function pullCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args, strict: true, options: {
      agent: { type: 'string' }, disk: { type: 'string' }, out: { type: 'string' }, snapshot: { type: 'string' }, state: { type: 'string' },
      certs: { type: 'string' }, ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
      parallel: { type: 'string' }, 'block-size': { type: 'string' }, 'no-repair': { type: 'boolean' }, json: { type: 'boolean' },
    },
  });
  for (const required of ['agent', 'disk', 'out'] as const) {
    if (values[required] === undefined || values[required] === '') throw new UsageError(`--${required} is required`);
  }
  const { agent, disk, out } = values as { agent: string; disk: string; out: string };
  if (values.snapshot === '') throw new UsageError('--snapshot needs an id');
  const single = [values.ca, values.cert, values.key];
  let files: { ca: string; cert: string; key: string };
  if (values.certs !== undefined) {
    if (single.some((v) => v !== undefined)) throw new UsageError('--certs or --ca/--cert/--key, not both');
    files = { ca: path.join(values.certs, 'ca-cert.pem'), cert: path.join(values.certs, 'client-cert.pem'), key: path.join(values.certs, 'client-key.pem') };
  } else if (single.every((v) => v !== undefined && v !== '')) {
    files = { ca: values.ca!, cert: values.cert!, key: values.key! };
  } else {
    throw new UsageError('the client certificate is required: --certs DIR, or all of --ca, --cert and --key');
  }
  const parallel = values.parallel === undefined ? DEFAULT_PARALLEL : parseInteger(values.parallel, '--parallel', 1, 64);
  const blockSize = values['block-size'] === undefined ? DEFAULT_BLOCK_SIZE : parseSize(values['block-size'], '--block-size');
  if (blockSize < MIN_BLOCK || blockSize > MAX_BLOCK || (blockSize & (blockSize - 1)) !== 0) {
    throw new UsageError(`--block-size must be a power of two from ${MIN_BLOCK} to ${MAX_BLOCK}, got ${values['block-size']}`);
  }
  const outPath = path.resolve(out);
  let stateFile = values.state;
  if (stateFile === undefined) {
    if (inspectTarget(outPath)?.kind === 'device') throw new UsageError('--state FILE is required when --out is a block device');
    stateFile = `${outPath}.pull-state.json`;
  }
  const credentials = { ca: readCredential(files.ca, '--ca'), cert: readCredential(files.cert, '--cert'), key: readCredential(files.key, '--key') };

  const terminal = process.stdout.isTTY && values.json !== true;
  const controller = new AbortController();
  const interrupt = (): void => controller.abort();
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  try {
    const summary = await runPull({
      agent, disk, out: outPath, stateFile: path.resolve(stateFile), snapshot: values.snapshot, credentials, parallel, blockSize,
      repair: values['no-repair'] !== true, progress: terminal ? barProgress(process.stdout) : jsonProgress(process.stdout), signal: controller.signal,
      warn: (line) => process.stderr.write(`coriolis-snapshot-agent pull: warning: ${line}\n`),
    });
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return 0;
  } catch (err) {
    if (controller.signal.aborted) throw new AgentError('cancelled', 'pull interrupted: its snapshot and state are kept, run the same command again to resume');
    throw err;
  } finally {
    process.off('SIGINT', interrupt);
    process.off('SIGTERM', interrupt);
  }
}

// Low-level probing with blkid(8) and partx(8) from util-linux. `blkid -p` reads the device
// itself, never the blkid cache or the udev database, so what it reports is what is on disk now:
// PTTYPE/PTUUID of a partition table, TYPE/UUID/LABEL of a filesystem or other signature, and
// PART_ENTRY_* for a partition. A probe that hangs (a dead nbd or multipath device) is abandoned
// after a timeout rather than blocking a listing.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

export type BlkidValues = Record<string, string>;

export interface ProbeWindow {
  /** Probe the bytes [offset, offset + size) of a file or device, as if they were a device. */
  offset: number;
  size: number;
}

/** How the catalog probes a device or a window of a file; tests pass a fake. */
export type BlkidProbe = (path: string, window?: ProbeWindow) => Promise<BlkidValues>;

const DEFAULT_PROBE_TIMEOUT_MS = 10_000;

/** blkid exits 2 when it found nothing to report: a blank or unknown device, not a failure. */
const BLKID_NOTHING_FOUND = 2;

/** `-o export` lines are KEY=value with shell-style backslash escapes in the value. */
export function parseBlkidExport(text: string): BlkidValues {
  const values: BlkidValues = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    values[line.slice(0, eq)] = line.slice(eq + 1).replace(/\\(.)/g, '$1');
  }
  return values;
}

interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command, giving up (and killing it) after timeoutMs even if it never exits. */
export function run(command: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk; });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    // A process stuck in uninterruptible sleep ignores SIGKILL and never closes its pipes.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')}: no answer after ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** `blkid -p -o export`: {} when the device holds nothing blkid recognises. */
export async function blkidProbe(path: string, window?: ProbeWindow, timeoutMs = DEFAULT_PROBE_TIMEOUT_MS): Promise<BlkidValues> {
  const args = ['-p', '-o', 'export'];
  if (window !== undefined) args.push('--offset', String(window.offset), '--size', String(window.size));
  const result = await run('blkid', [...args, '--', path], timeoutMs);
  // blkid also exits 2, with or without a message, when it cannot open the device.
  if (result.status === BLKID_NOTHING_FOUND && result.stderr.trim() === '') {
    if (fs.existsSync(path)) return {};
    throw new Error(`blkid -p ${path}: no such file or device`);
  }
  if (result.status !== 0) {
    // Exit 8 is an ambivalent result (several signatures): nothing can be trusted about it.
    throw new Error(`blkid -p ${path}: exit status ${result.status}: ${result.stderr.trim() || 'no message'}`);
  }
  const values = parseBlkidExport(result.stdout);
  delete values.DEVNAME;
  return values;
}

export interface PartitionEntry {
  number: number;
  /** Both in 512-byte sectors, the unit partx uses for files. */
  startSector512: number;
  sectors512: number;
  /** As blkid spells PART_ENTRY_UUID and PART_ENTRY_TYPE: lower-case GUIDs, or "0x83" on dos. */
  uuid: string;
  type: string;
}

/**
 * The partition table of a file, read in user space by partx (util-linux, always installed;
 * sfdisk is in the separate fdisk package). For disk images, which have no kernel partitions.
 */
export async function partitionEntries(file: string, timeoutMs = DEFAULT_PROBE_TIMEOUT_MS): Promise<PartitionEntry[]> {
  const result = await run('partx', ['--pairs', '--output', 'NR,START,SECTORS,UUID,TYPE', '--', file], timeoutMs);
  if (result.status !== 0) throw new Error(`partx ${file}: exit status ${result.status}: ${result.stderr.trim() || 'no message'}`);
  return result.stdout.split('\n').filter((line) => line.trim() !== '').map((line) => {
    const fields: Record<string, string> = {};
    for (const match of line.matchAll(/(\w+)="([^"]*)"/g)) fields[match[1]] = match[2]!;
    return {
      number: Number(fields.NR),
      startSector512: Number(fields.START),
      sectors512: Number(fields.SECTORS),
      uuid: fields.UUID ?? '',
      type: fields.TYPE ?? '',
    };
  });
}

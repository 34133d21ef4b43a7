// `npm run test:vm`: runs the VM test suite (dist/test/vm/**/*.test.js) inside a real Debian
// kernel through run-in-vm, with scratch disks attached and, when VEEAMSNAP_KO names a built
// veeamsnap.ko, that module loaded. Runs on the host; exits with the guest's exit status.
// See test/vm/README.md.
//
// Guest test files may import the disk layout and the small helpers below; importing this file
// does not start anything.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const MiB = 1024 * 1024;

export interface VmDiskSpec {
  /** 'origin' disks are what gets snapshotted; the 'store' disk holds snapstore space. */
  role: 'origin' | 'store';
  name: string;
  sizeBytes: number;
}

/** The disks attached to every VM run, in --disk order: /dev/vda, /dev/vdb, /dev/vdc. */
export const VM_DISK_LAYOUT: readonly VmDiskSpec[] = [
  { role: 'origin', name: 'origin0', sizeBytes: 256 * MiB },
  { role: 'origin', name: 'origin1', sizeBytes: 256 * MiB },
  { role: 'store', name: 'store', sizeBytes: 1024 * MiB },
];

/** Why a VM test must be skipped here (running on the host), or false inside the VM. */
export function vmSkipReason(): string | false {
  return process.env.RUN_IN_VM === '1' ? false : 'needs run-in-vm (npm run test:vm)';
}

/** Inside the VM: whether run.ts loaded veeamsnap.ko (VEEAMSNAP_KO is then its host path). */
export function veeamsnapLoaded(): boolean {
  return process.env.RUN_IN_VM === '1' && !!process.env.VEEAMSNAP_KO;
}

/** Inside the VM: whether run.ts loaded bdevfilter.ko and veeamblksnap.ko (BLKSNAP_KO is then its host path). */
export function blksnapLoaded(): boolean {
  return process.env.RUN_IN_VM === '1' && !!process.env.BLKSNAP_KO;
}

/** Inside the VM: the guest device of each disk of VM_DISK_LAYOUT, from VM_DISKS. */
export function guestDisks(): Array<VmDiskSpec & { device: string }> {
  const devices = (process.env.VM_DISKS ?? '').split(/\s+/).filter(Boolean);
  if (devices.length !== VM_DISK_LAYOUT.length) {
    throw new Error(`VM_DISKS='${process.env.VM_DISKS ?? ''}': expected ${VM_DISK_LAYOUT.length} disks`);
  }
  return VM_DISK_LAYOUT.map((spec, i) => ({ ...spec, device: devices[i]! }));
}

// ------------------------------------------------------------------------------------------
// host side

const DEFAULT_TIMEOUT_S = 1500;
const DEFAULT_MEM = '2G';

class UsageError extends Error {}

function log(message: string): void {
  process.stderr.write(`test:vm: ${message}\n`);
}

function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new UsageError(`no package.json above ${start}`);
  }
}

function findRunInVm(repoRoot: string): string {
  const fromEnv = process.env.RUN_IN_VM;
  if (fromEnv === '1') {
    throw new UsageError('RUN_IN_VM=1: this is already the guest; run.js runs on the host ' +
      '(inside the VM, run node --test on the test files directly)');
  }
  if (fromEnv) {
    const resolved = path.resolve(fromEnv);
    if (!isExecutable(resolved)) throw new UsageError(`RUN_IN_VM=${fromEnv}: not an executable file`);
    return resolved;
  }
  const beside = path.resolve(repoRoot, '..', 'shared', 'vm', 'run-in-vm');
  if (isExecutable(beside)) return beside;
  throw new UsageError(`cannot find run-in-vm: set RUN_IN_VM=/path/to/run-in-vm, or provide ${beside}`);
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function findTestFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...findTestFiles(full));
    else if (entry.isFile() && entry.name.endsWith('.test.js')) out.push(full);
  }
  return out.sort();
}

/** A module file named by `variable`: unset or empty = its tests skipped; set = must be a readable file. */
function findModule(variable = 'VEEAMSNAP_KO'): string | undefined {
  const ko = process.env[variable];
  if (!ko) return undefined;
  const resolved = path.resolve(ko);
  if (!fs.existsSync(resolved) || !fs.statSync(resolved).isFile()) {
    throw new UsageError(`${variable}=${ko}: no such file (unset ${variable} to run without it)`);
  }
  if (/\s/.test(resolved)) throw new UsageError(`${variable}=${ko}: run-in-vm cannot insmod a path with spaces`);
  return resolved;
}

/** blksnap needs both of its modules; its default parameters make the small test snapstores ask for space every MiB. */
const DEFAULT_BLKSNAP_PARAMS = 'diff_storage_minimum=2048';
function findBlksnapModules(): { blksnap: string; bdevfilter: string } | undefined {
  const blksnap = findModule('BLKSNAP_KO');
  const bdevfilter = findModule('BDEVFILTER_KO');
  if (!blksnap && !bdevfilter) return undefined;
  if (!blksnap || !bdevfilter) throw new UsageError('BLKSNAP_KO (veeamblksnap.ko) and BDEVFILTER_KO (bdevfilter.ko) go together');
  return { blksnap, bdevfilter };
}

/** The kernel release a .ko was built for, from the vermagic string in its .modinfo section. */
function moduleKernel(ko: string): string | undefined {
  const data = fs.readFileSync(ko);
  const at = data.indexOf('vermagic=');
  if (at < 0) return undefined;
  const end = data.indexOf(0, at);
  return data.subarray(at + 'vermagic='.length, end < 0 ? undefined : end).toString('latin1').split(' ')[0] || undefined;
}

function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

async function main(argv: string[]): Promise<number> {
  const repoRoot = findRepoRoot(__dirname);
  const runInVm = findRunInVm(repoRoot);
  const ko = findModule();
  const blksnap = findBlksnapModules();
  if (ko && blksnap) throw new UsageError('VEEAMSNAP_KO and BLKSNAP_KO: one snapshot module per run (both on the same disks would interfere)');

  // Optional arguments select test files by substring: `npm run test:vm -- smoke`.
  const all = findTestFiles(__dirname);
  const files = argv.length ? all.filter((f) => argv.some((a) => f.includes(a))) : all;
  if (files.length === 0) {
    throw new UsageError(argv.length ? `no test file under ${__dirname} matches ${argv.join(' ')}` :
      `no *.test.js under ${__dirname} (did tsc run?)`);
  }

  const timeout = process.env.VM_TIMEOUT ?? String(DEFAULT_TIMEOUT_S);
  const mem = process.env.VM_MEM ?? DEFAULT_MEM;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-test-vm-'));
  try {
    const diskFiles = VM_DISK_LAYOUT.map((spec) => {
      const file = path.join(tmp, `${spec.name}.img`);
      fs.closeSync(fs.openSync(file, 'w'));
      fs.truncateSync(file, spec.sizeBytes); // sparse
      return file;
    });
    const letters = 'abcdefghijklmnopqrstuvwxyz';
    const devs = (role: VmDiskSpec['role']): string =>
      VM_DISK_LAYOUT.flatMap((spec, i) => (spec.role === role ? [`/dev/vd${letters[i]}`] : [])).join(' ');

    // The kernel to boot: VM_KERNEL, else the one the module was built for, else run-in-vm's
    // default (the newest installed).
    const kernel = process.env.VM_KERNEL || (ko ? moduleKernel(ko) : blksnap ? moduleKernel(blksnap.blksnap) : undefined);
    const args = ['--timeout', timeout, '--mem', mem, '--share', repoRoot, '--cwd', repoRoot];
    if (kernel) args.push('--kernel-version', kernel);
    if (process.env.VERBOSE === '1') args.push('-v');
    for (const file of diskFiles) args.push('--disk', file);
    if (ko) {
      const params = process.env.VEEAMSNAP_PARAMS?.trim();
      args.push('--insmod', params ? `${ko} ${params}` : ko);
    } else {
      log('VEEAMSNAP_KO not set: the veeamsnap engine tests are skipped (kernel nbd-client tests still run)');
    }
    if (blksnap) {
      const params = process.env.BLKSNAP_PARAMS?.trim() || DEFAULT_BLKSNAP_PARAMS;
      args.push('--insmod', blksnap.bdevfilter, '--insmod', `${blksnap.blksnap} ${params}`);
    } else {
      log('BLKSNAP_KO/BDEVFILTER_KO not set: the blksnap engine tests are skipped');
    }
    // Always explicit: the host environment is forwarded to the guest, and a VEEAMSNAP_KO
    // that was not loaded must not reach the tests.
    args.push('--env', `VEEAMSNAP_KO=${ko ?? ''}`, '--env', `BLKSNAP_KO=${blksnap?.blksnap ?? ''}`);
    args.push('--env', `VM_ORIGIN_DISKS=${devs('origin')}`, '--env', `VM_STORE_DISK=${devs('store')}`);
    args.push('--', process.execPath, '--test', '--test-reporter=spec', '--test-concurrency=1',
      ...files.map((f) => path.relative(repoRoot, f)));

    if (process.env.VERBOSE === '1') log(`running: ${[runInVm, ...args].map(shellQuote).join(' ')}`);
    log(`${files.length} test file(s), disks ${VM_DISK_LAYOUT.map((d) => `${d.name}=${d.sizeBytes / MiB}MiB`).join(' ')}` +
      `, veeamsnap ${ko ?? 'not loaded'}, blksnap ${blksnap?.blksnap ?? 'not loaded'}, kernel ${kernel ?? 'newest installed'}, timeout ${timeout} s`);

    const started = Date.now();
    const child = spawn(runInVm, args, { cwd: repoRoot, stdio: ['ignore', 'inherit', 'inherit'] });
    const forward = (signal: NodeJS.Signals): void => { child.kill(signal); };
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    const status = await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? os.constants.signals[signal] : 0)));
    });
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);

    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (status === 124) log(`the VM timed out after ${timeout} s (VM_TIMEOUT sets the limit)`);
    else if (status === 125) log('run-in-vm could not start the VM or load a module (see its message above)');
    log(`guest exit status ${status} after ${seconds} s`);
    return status;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (status) => { process.exitCode = status; },
    (err: unknown) => {
      log(err instanceof UsageError ? `error: ${err.message}` : `error: ${(err as Error)?.stack ?? String(err)}`);
      process.exitCode = 2;
    },
  );
}

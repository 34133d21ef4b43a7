// `npm run test:vm`: runs the VM test suite (dist/test/vm/**/*.test.js) inside a real Debian
// kernel through the project's runner (vm.ts), with scratch disks attached and the kernel modules
// named by the environment (VM_MODULES) loaded. Runs on the host; exits with the guest's exit
// status. See test/vm/README.md.
//
// Guest test files may import the disk layout and the small helpers below; importing this file
// does not start anything.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EXIT_TIMEOUT, EXIT_VM, runInVm, shellQuote, VmError, type VmModule } from './vm';

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

/**
 * The kernel modules the suite can load, in load order (veeamblksnap needs bdevfilter's symbols):
 * each is a file named by `fileEnv`, with the parameters in `paramsEnv`. Unset: not loaded, and
 * the tests that need it are skipped.
 */
export const VM_MODULES = [
  { name: 'bdevfilter', fileEnv: 'BDEVFILTER_KO', paramsEnv: 'BDEVFILTER_PARAMS' },
  { name: 'veeamblksnap', fileEnv: 'BLKSNAP_KO', paramsEnv: 'BLKSNAP_PARAMS' },
  { name: 'veeamsnap', fileEnv: 'VEEAMSNAP_KO', paramsEnv: 'VEEAMSNAP_PARAMS' },
] as const;

type VmModuleName = (typeof VM_MODULES)[number]['name'];

/** Why a VM test must be skipped here (running on the host), or false inside the VM. */
export function vmSkipReason(): string | false {
  return process.env.RUN_IN_VM === '1' ? false : 'needs the VM (npm run test:vm)';
}

/** Inside the VM: whether run.ts loaded the module (its *_KO variable then holds its host path). */
export function moduleLoaded(name: VmModuleName): boolean {
  const spec = VM_MODULES.find((m) => m.name === name)!;
  return process.env.RUN_IN_VM === '1' && !!process.env[spec.fileEnv];
}

export function veeamsnapLoaded(): boolean {
  return moduleLoaded('veeamsnap');
}

/** blksnap is two modules: bdevfilter, then veeamblksnap. */
export function blksnapLoaded(): boolean {
  return moduleLoaded('bdevfilter') && moduleLoaded('veeamblksnap');
}

/** Inside the VM: the guest device of each disk of VM_DISK_LAYOUT, from VM_DISKS. */
export function guestDisks(): Array<VmDiskSpec & { device: string }> {
  const devices = (process.env.VM_DISKS ?? '').split(/\s+/).filter(Boolean);
  if (devices.length !== VM_DISK_LAYOUT.length) {
    throw new Error(`VM_DISKS='${process.env.VM_DISKS ?? ''}': expected ${VM_DISK_LAYOUT.length} disks`);
  }
  return VM_DISK_LAYOUT.map((spec, i) => ({ ...spec, device: devices[i] }));
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

function findTestFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...findTestFiles(full));
    else if (entry.isFile() && entry.name.endsWith('.test.js')) out.push(full);
  }
  return out.sort();
}

/** The small test snapstores ask blksnap for space every MiB (its default step is 1 GiB). */
const DEFAULT_BLKSNAP_PARAMS = 'diff_storage_minimum=2048';

/** The modules the environment names, in load order; an unset or empty variable leaves one out. */
function modulesFromEnv(): Array<VmModule & { fileEnv: string }> {
  const chosen = VM_MODULES.flatMap((spec) => {
    const file = process.env[spec.fileEnv];
    if (!file) return [];
    const resolved = path.resolve(file);
    if (!fs.statSync(resolved, { throwIfNoEntry: false })?.isFile()) {
      throw new UsageError(`${spec.fileEnv}=${file}: no such file (unset ${spec.fileEnv} to run without ${spec.name})`);
    }
    const params = process.env[spec.paramsEnv]?.trim() || (spec.fileEnv === 'BLKSNAP_KO' ? DEFAULT_BLKSNAP_PARAMS : '');
    return [{ file: resolved, params, fileEnv: spec.fileEnv }];
  });
  if (chosen.some((m) => m.fileEnv === 'VEEAMSNAP_KO') && chosen.some((m) => m.fileEnv === 'BLKSNAP_KO')) {
    throw new UsageError('VEEAMSNAP_KO and BLKSNAP_KO: one snapshot module per run (both on the same disks would interfere)');
  }
  if (chosen.some((m) => m.fileEnv === 'BLKSNAP_KO') !== chosen.some((m) => m.fileEnv === 'BDEVFILTER_KO')) {
    throw new UsageError('blksnap is two modules: set both BDEVFILTER_KO and BLKSNAP_KO');
  }
  return chosen;
}

async function main(argv: string[]): Promise<number> {
  if (process.env.RUN_IN_VM === '1') {
    throw new UsageError('RUN_IN_VM=1: this is already the guest; run.js runs on the host ' +
      '(inside the VM, run node --test on the test files directly)');
  }
  const repoRoot = findRepoRoot(__dirname);
  const modules = modulesFromEnv();

  // Optional arguments select test files by substring: `npm run test:vm -- smoke`.
  const all = findTestFiles(__dirname);
  const files = argv.length ? all.filter((f) => argv.some((a) => f.includes(a))) : all;
  if (files.length === 0) {
    throw new UsageError(argv.length ? `no test file under ${__dirname} matches ${argv.join(' ')}` :
      `no *.test.js under ${__dirname} (did tsc run?)`);
  }
  const timeout = Number(process.env.VM_TIMEOUT ?? DEFAULT_TIMEOUT_S);
  if (!Number.isInteger(timeout) || timeout < 0) throw new UsageError(`VM_TIMEOUT=${process.env.VM_TIMEOUT}: whole seconds, please`);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-test-vm-'));
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const disks = VM_DISK_LAYOUT.map((spec) => {
      const file = path.join(tmp, `${spec.name}.img`);
      fs.closeSync(fs.openSync(file, 'w'));
      fs.truncateSync(file, spec.sizeBytes); // sparse
      return file;
    });
    const devs = (role: VmDiskSpec['role']): string =>
      VM_DISK_LAYOUT.flatMap((spec, i) => (spec.role === role ? [`/dev/vd${String.fromCharCode(97 + i)}`] : [])).join(' ');
    for (const spec of VM_MODULES) {
      if (!modules.some((m) => m.fileEnv === spec.fileEnv)) log(`${spec.fileEnv} not set: the tests that need ${spec.name} are skipped`);
    }
    const command = [process.execPath, '--test', '--test-reporter=spec', '--test-concurrency=1',
      ...files.map((f) => path.relative(repoRoot, f))];
    // Every module variable is set explicitly: the host environment is forwarded to the guest,
    // and a module that was not loaded must not look loaded there.
    const env: Record<string, string> = Object.fromEntries(VM_MODULES.map((spec) =>
      [spec.fileEnv, modules.find((m) => m.fileEnv === spec.fileEnv)?.file ?? '']));
    env.VM_ORIGIN_DISKS = devs('origin');
    env.VM_STORE_DISK = devs('store');

    log(`${files.length} test file(s), disks ${VM_DISK_LAYOUT.map((d) => `${d.name}=${d.sizeBytes / MiB}MiB`).join(' ')}` +
      `, modules ${modules.map((m) => `${m.file}${m.params ? ` ${m.params}` : ''}`).join(', ') || 'none'}` +
      `, kernel ${process.env.VM_KERNEL || (modules.length ? "the modules'" : 'newest installed')}, timeout ${timeout} s`);
    if (process.env.VERBOSE === '1') log(`running: ${command.map(shellQuote).join(' ')}`);

    const started = Date.now();
    const status = await runInVm({
      command,
      kernel: process.env.VM_KERNEL || undefined,
      disks,
      modules,
      shares: [repoRoot],
      cwd: repoRoot,
      env,
      timeoutSeconds: timeout,
      memory: process.env.VM_MEM || DEFAULT_MEM,
      verbose: process.env.VERBOSE === '1',
      signal: abort.signal,
    });
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (status === EXIT_TIMEOUT) log(`the VM timed out after ${timeout} s (VM_TIMEOUT sets the limit)`);
    else if (status === EXIT_VM) log('the VM could not start or a module did not load (see above)');
    log(`guest exit status ${status} after ${seconds} s`);
    return status;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (status) => { process.exitCode = status; },
    (err: unknown) => {
      if (err instanceof VmError) {
        log(`error: ${err.message}`);
        process.exitCode = EXIT_VM;
      } else {
        log(err instanceof UsageError ? `error: ${err.message}` : `error: ${(err as Error)?.stack ?? String(err)}`);
        process.exitCode = 2;
      }
    },
  );
}

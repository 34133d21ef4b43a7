// The project's VM runner: runs one command as root inside an installed Debian kernel under
// QEMU, on this machine's own programs. The guest's root filesystem is the host's `/`, read-only
// over virtio-9p under a tmpfs layer (writes outside the shares and the disks vanish at power-off);
// the shares are the host directories mounted read-write at the same paths. A small initramfs,
// built here for every run, holds a static busybox, the kernel's own virtio/9p/overlay modules and
// the modules to test. The command's stdout, stderr and exit status come back over three virtio
// serial ports. See test/vm/README.md.
//
// Importing this file starts nothing; `node dist/test/vm/vm.js --help` is its command line.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';

/** The VM did not finish in time and was stopped. */
export const EXIT_TIMEOUT = 124;
/** The VM could not start, a module did not load, or the guest stopped without a status. */
export const EXIT_VM = 125;

/** Modules of the booted kernel the guest needs before it can reach anything (built-in ones are skipped). */
const BOOT_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console', 'virtio_rng', '9pnet_virtio', '9p', 'overlay', 'loop', 'nbd'];
/** Serial port names: the command's stdout and stderr, and the line with its exit status. */
const PORTS = { stdout: 'vm.stdout', stderr: 'vm.stderr', status: 'vm.status' } as const;
/** Host variables that describe the host session, not the command's environment. */
const HOST_ONLY_ENV = /^(PWD|OLDPWD|SHLVL|_|HOSTNAME|DISPLAY|XAUTHORITY|SSH_\w+|XDG_RUNTIME_DIR|DBUS_SESSION_BUS_ADDRESS|TMUX\w*|INVOCATION_ID|JOURNAL_STREAM|NODE_CHANNEL_\w+|NODE_TEST_CONTEXT|NODE_UNIQUE_ID)$/;

/** A problem with what the VM was asked to do, found before it starts. */
export class VmError extends Error {}

export interface VmModule {
  /** A .ko file on the host (.ko.xz, .ko.zst and .ko.gz are unpacked). */
  file: string;
  /** Module parameters, e.g. "zerosnapdata=1 debuglogging=1". */
  params?: string;
}

export interface VmOptions {
  command: string[];
  /** A kernel release from listKernels(); default: the one the modules name, else the newest. */
  kernel?: string;
  /** Raw images (or block devices) attached as /dev/vda, /dev/vdb, ... in this order. */
  disks?: string[];
  /** Loaded with insmod in this order before the command; a failure stops the run with EXIT_VM. */
  modules?: VmModule[];
  /** Host directories mounted read-write at the same paths. */
  shares?: string[];
  /** The command's working directory (default: the current one). */
  cwd?: string;
  /** Set on top of the forwarded host environment. */
  env?: Record<string, string>;
  /** Seconds before the VM is stopped and the run answers EXIT_TIMEOUT (0: never). */
  timeoutSeconds?: number;
  /** Guest memory, QEMU syntax (default 2G). */
  memory?: string;
  cpus?: number;
  /** Where the command's output goes, as it is written (default: this process's). */
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
  /** Progress and the QEMU command line on stderr. */
  verbose?: boolean;
  /** Stops the VM; the run then answers 130. */
  signal?: AbortSignal;
}

// ------------------------------------------------------------------------------------------
// kernels and modules

/** Compares kernel releases by their numbers: 6.12.107+deb12-amd64 is newer than 6.1.0-57-amd64. */
function compareReleases(a: string, b: string): number {
  const numbers = (release: string): number[] => (release.match(/\d+/g) ?? []).map(Number);
  const x = numbers(a);
  const y = numbers(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? -1) - (y[i] ?? -1);
    if (d !== 0) return d;
  }
  return a.localeCompare(b);
}

/** Installed kernels the VM can boot (a /boot/vmlinuz and a module tree), oldest first. */
export function listKernels(): string[] {
  let releases: string[];
  try {
    releases = fs.readdirSync('/lib/modules');
  } catch {
    return [];
  }
  return releases.filter((r) => fs.existsSync(`/boot/vmlinuz-${r}`) && fs.existsSync(`/lib/modules/${r}/modules.dep`))
    .sort(compareReleases);
}

/** The kernel release a module was built for, from the vermagic in its .modinfo section. */
export function moduleKernel(file: string): string | undefined {
  const data = readModule(file);
  const at = data.indexOf('vermagic=');
  if (at < 0) return undefined;
  const end = data.indexOf(0, at);
  return data.subarray(at + 'vermagic='.length, end < 0 ? undefined : end).toString('latin1').split(' ')[0] || undefined;
}

/** The kernel to boot: the one asked for, else the one every module was built for, else the newest. */
export function chooseKernel(requested: string | undefined, modules: VmModule[]): string {
  const installed = listKernels();
  const hint = 'install linux-image-RELEASE (its modules come with it)';
  if (requested) {
    if (!installed.includes(requested)) {
      throw new VmError(`kernel ${requested} is not installed (${installed.join(', ') || 'none is'}): ${hint}`);
    }
    return requested;
  }
  const wanted = [...new Set(modules.map((m) => moduleKernel(m.file) ?? ''))];
  if (wanted.length > 1) throw new VmError(`the modules were built for different kernels: ${wanted.join(', ')}`);
  if (wanted.length === 1) {
    const [release] = wanted as [string];
    if (!release) throw new VmError(`${modules[0].file}: no vermagic, so no kernel to boot for it`);
    if (!installed.includes(release)) throw new VmError(`the modules were built for ${release}, which is not installed: ${hint}`);
    return release;
  }
  const newest = installed.at(-1);
  if (!newest) throw new VmError(`no bootable kernel in /boot and /lib/modules: ${hint}`);
  return newest;
}

/** A module file's bytes, unpacked: busybox insmod takes plain ELF only. */
function readModule(file: string): Buffer {
  if (file.endsWith('.ko.gz')) return zlib.gunzipSync(fs.readFileSync(file));
  const unpacker = file.endsWith('.ko.xz') ? 'xz' : file.endsWith('.ko.zst') ? 'zstd' : undefined;
  if (!unpacker) return fs.readFileSync(file);
  const result = spawnSync(unpacker, ['-dc', file], { maxBuffer: 1 << 30 });
  if (result.status !== 0) throw new VmError(`cannot unpack ${file} with ${unpacker}: ${result.error?.message ?? result.stderr.toString()}`);
  return result.stdout;
}

/** Module files of `names` and of what they depend on, in load order, from the release's modules.dep. */
function bootModuleFiles(release: string, names: string[]): string[] {
  const dir = `/lib/modules/${release}`;
  const moduleName = (file: string): string => path.basename(file).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_');
  const deps = new Map<string, { file: string; deps: string[] }>();
  for (const line of fs.readFileSync(path.join(dir, 'modules.dep'), 'utf8').split('\n')) {
    const [file, rest] = line.split(':');
    if (file && rest !== undefined) deps.set(moduleName(file), { file, deps: rest.trim().split(/\s+/).filter(Boolean) });
  }
  const builtin = new Set(fs.readFileSync(path.join(dir, 'modules.builtin'), 'utf8').split('\n').filter(Boolean).map(moduleName));
  const order: string[] = [];
  const visit = (name: string): void => {
    const entry = deps.get(name);
    if (!entry) {
      if (builtin.has(name)) return;
      throw new VmError(`kernel ${release} has no module ${name}, built in or loadable`);
    }
    if (order.includes(entry.file)) return;
    // Dependencies first, each after its own.
    for (const dep of [...entry.deps].reverse()) visit(moduleName(dep));
    order.push(entry.file);
  };
  names.forEach(visit);
  return order.map((file) => path.join(dir, file));
}

// ------------------------------------------------------------------------------------------
// the initramfs

/** A cpio archive in the kernel's initramfs format (newc), gzipped. */
class Cpio {
  private parts: Buffer[] = [];
  private inode = 1;

  dir(name: string): this {
    return this.entry(name, 0o040755, Buffer.alloc(0));
  }

  file(name: string, data: string | Buffer, mode = 0o644): this {
    return this.entry(name, 0o100000 | mode, typeof data === 'string' ? Buffer.from(data) : data);
  }

  gzip(): Buffer {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0));
    return zlib.gzipSync(Buffer.concat(this.parts), { level: 1 });
  }

  private entry(name: string, mode: number, data: Buffer): this {
    const fields = [this.inode++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
    const header = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}${name}\0`);
    this.parts.push(header, Buffer.alloc(pad4(header.length)), data, Buffer.alloc(pad4(data.length)));
    return this;
  }
}

function pad4(length: number): number {
  return (4 - (length % 4)) % 4;
}

/** A word for the shell, quoted unless it needs nothing. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Whether an ELF64 program asks for a dynamic loader (has a PT_INTERP program header). */
function isDynamic(elf: Buffer): boolean {
  const PT_INTERP = 3;
  const table = Number(elf.readBigUInt64LE(0x20));
  const entrySize = elf.readUInt16LE(0x36);
  for (let i = 0; i < elf.readUInt16LE(0x38); i++) {
    if (elf.readUInt32LE(table + i * entrySize) === PT_INTERP) return true;
  }
  return false;
}

function findStaticBusybox(): string {
  for (const candidate of ['/bin/busybox', '/usr/bin/busybox']) {
    // The initramfs has no C library: a dynamic busybox cannot run there.
    if (fs.existsSync(candidate) && !isDynamic(fs.readFileSync(candidate))) return candidate;
  }
  throw new VmError('no static busybox: apt-get install busybox-static');
}

// PID 1. It never exits: the kernel would panic. Every way out is `reboot -f`, which QEMU's
// -no-reboot turns into QEMU exiting. Until the serial ports exist, complaints go to the console.
const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for ko in /vm/boot/*.ko; do insmod "$ko" || echo "vm: insmod $ko failed" >/dev/console; done

port() {
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/\${p##*/}" ] && echo "/dev/\${p##*/}" && return 0
	done
	return 1
}
tries=0
until OUT=$(port ${PORTS.stdout}) && ERR=$(port ${PORTS.stderr}) && STATUS=$(port ${PORTS.status}); do
	tries=$((tries + 1))
	[ $tries -gt 200 ] && { echo "vm: the virtio serial ports did not appear" >/dev/console; reboot -f; }
	usleep 50000
done
# A port opens once at a time: open each here, and let the command inherit them.
exec 3>"$OUT" 4>"$ERR" 2>&4
finish() { echo "$1" >"$STATUS"; sync; reboot -f; }
fail() { echo "vm: $*" >&2; finish ${EXIT_VM}; }

P9=trans=virtio,version=9p2000.L,msize=262144
R=/newroot
mount -t 9p -o $P9,ro,cache=loose host /host || fail "cannot mount the host's root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /layer && mkdir /layer/upper /layer/work || fail "cannot mount a tmpfs"
mount -t overlay -o lowerdir=/host,upperdir=/layer/upper,workdir=/layer/work overlay $R || fail "cannot mount the overlay"
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
for fd in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
	[ -e "$R/dev/\${fd%%:*}" ] || ln -s "\${fd#*:}" "$R/dev/\${fd%%:*}"
done
while read -r tag dir; do
	mkdir -p "$R$dir" && mount -t 9p -o $P9,cache=mmap "$tag" "$R$dir" || fail "cannot mount the share $dir"
done </vm/shares
hostname vm
ip link set lo up
# The kernel asks for modules by running this program (mounting ext4 loads ext4): the host's modprobe.
echo /vm/modprobe >/proc/sys/kernel/modprobe

while read -r ko params; do
	[ -n "$ko" ] || continue
	insmod "/vm/modules/$ko" $params || { dmesg | tail -n 20 >&2; fail "insmod $ko\${params:+ $params} failed (the kernel's last words above)"; }
done </vm/modules.list

mkdir -p $R/run/vm && cp /vm/command.sh $R/run/vm/ || fail "cannot copy the command into the guest"
chroot $R /bin/bash /run/vm/command.sh </dev/null >&3 2>&4
finish $?
`;

function commandScript(command: string[], cwd: string, env: Record<string, string>): string {
  const exports = Object.entries(env).map(([name, value]) => `export ${name}=${shellQuote(value)}`);
  return [
    '# written by test/vm/vm.ts',
    ...exports,
    `cd -- ${shellQuote(cwd)} || { echo "vm: no directory ${cwd.replace(/[`"$\\]/g, '')} in the guest" >&2; exit ${EXIT_VM}; }`,
    `exec ${command.map(shellQuote).join(' ')}`,
    '',
  ].join('\n');
}

/** The host environment, minus the host session's own variables, plus `extra`. */
function guestEnvironment(extra: Record<string, string>): Record<string, string> {
  // No udev in the guest: libdevmapper (dmsetup, lvm) must make its /dev/mapper nodes itself.
  const env: Record<string, string> = { DM_DISABLE_UDEV: '1' };
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && /^[A-Za-z_]\w*$/.test(name) && !HOST_ONLY_ENV.test(name)) env[name] = value;
  }
  return { ...env, ...extra };
}

function buildInitramfs(release: string, options: { modules: VmModule[]; shares: string[]; script: string }): Buffer {
  const cpio = new Cpio();
  for (const dir of ['bin', 'dev', 'proc', 'sys', 'host', 'layer', 'newroot', 'vm', 'vm/boot', 'vm/modules']) cpio.dir(dir);
  cpio.file('bin/busybox', fs.readFileSync(findStaticBusybox()), 0o755);
  cpio.file('init', INIT, 0o755);
  cpio.file('vm/modprobe', '#!/bin/busybox sh\nexec /bin/busybox chroot /newroot /sbin/modprobe "$@"\n', 0o755);
  bootModuleFiles(release, BOOT_MODULES).forEach((file, i) => {
    cpio.file(`vm/boot/${String(i).padStart(2, '0')}-${path.basename(file).replace(/\.ko.*$/, '')}.ko`, readModule(file));
  });
  const list = options.modules.map((module, i) => {
    const name = `${i}-${path.basename(module.file).replace(/\.ko.*$/, '')}.ko`;
    cpio.file(`vm/modules/${name}`, readModule(module.file));
    return `${name} ${module.params ?? ''}\n`;
  });
  cpio.file('vm/modules.list', list.join(''));
  cpio.file('vm/shares', options.shares.map((dir, i) => `share${i} ${dir}\n`).join(''));
  cpio.file('vm/command.sh', options.script);
  return cpio.gzip();
}

// ------------------------------------------------------------------------------------------
// QEMU

/** Where the guest-side packers of a bzImage start, and the host tool that unpacks them. */
const KERNEL_PACKERS = [
  { magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), tool: ['xz', '-dc', '--single-stream'] },
  { magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), tool: ['zstd', '-dcq'] },
  { magic: Buffer.from([0x1f, 0x8b, 0x08]), tool: ['gzip', '-dcq'] },
];

/**
 * The kernel image to boot. Under TCG, unpacking a bzImage costs the guest many seconds of
 * emulated CPU, so the ELF vmlinux inside it is unpacked once here (kept in ~/.cache) and booted
 * through its PVH entry point. Any failure falls back to the bzImage.
 */
function kernelImage(release: string, log: (message: string) => void): string {
  const bzImage = `/boot/vmlinuz-${release}`;
  const config = `/boot/config-${release}`;
  if (!fs.existsSync(config) || !fs.readFileSync(config, 'utf8').split('\n').includes('CONFIG_PVH=y')) return bzImage;
  const stat = fs.statSync(bzImage);
  const cacheDir = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'coriolis-vm');
  const cached = path.join(cacheDir, `vmlinux-${release}-${stat.size}-${Math.trunc(stat.mtimeMs)}`);
  if (fs.existsSync(cached)) return cached;
  const data = fs.readFileSync(bzImage);
  for (const { magic, tool } of KERNEL_PACKERS) {
    const at = data.indexOf(magic);
    if (at < 0 || !onPath(tool[0])) continue;
    // The packed kernel is followed by other data: the tool may complain, the ELF is what counts.
    const unpacked = spawnSync(tool[0], tool.slice(1), { input: data.subarray(at), maxBuffer: 1 << 30 }).stdout;
    if (unpacked?.subarray(0, 4).equals(Buffer.from('\x7fELF', 'latin1'))) {
      try {
        fs.mkdirSync(cacheDir, { recursive: true });
        fs.writeFileSync(`${cached}.part`, unpacked);
        fs.renameSync(`${cached}.part`, cached);
        log(`unpacked ${bzImage} into ${cached}`);
        return cached;
      } catch (err) {
        log(`cannot keep the unpacked kernel in ${cacheDir}: ${(err as Error).message}; booting the bzImage`);
        return bzImage;
      }
    }
  }
  return bzImage;
}

function hasHardwareKvm(): boolean {
  // A /dev/kvm served by a paravirtual flavour (PVM in some cloud VMs) cannot run a stock kernel.
  if (!fs.existsSync('/sys/module/kvm_intel') && !fs.existsSync('/sys/module/kvm_amd')) return false;
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** QEMU writes a comma in an option value as two. */
function qemuValue(text: string): string {
  return text.replace(/,/g, ',,');
}

function onPath(program: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    try {
      fs.accessSync(path.join(dir, program), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** A Unix socket QEMU connects a serial port to; resolves with what arrives, or pipes it to `sink`. */
function portListener(file: string, sink?: NodeJS.WritableStream): { server: net.Server; done: Promise<string> } {
  let resolveDone: (text: string) => void;
  const done = new Promise<string>((resolve) => { resolveDone = resolve; });
  const server = net.createServer((socket) => {
    server.close(); // one connection: QEMU's
    let text = '';
    if (sink) socket.pipe(sink, { end: false });
    else socket.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
    socket.on('error', () => {});
    socket.on('close', () => resolveDone(text));
  });
  server.listen(file);
  return { server, done };
}

/** Runs the command in a VM; answers its exit status, EXIT_TIMEOUT, EXIT_VM or 130 (aborted). */
export async function runInVm(options: VmOptions): Promise<number> {
  if (options.command.length === 0) throw new VmError('no command to run');
  if (!onPath('qemu-system-x86_64')) throw new VmError('qemu-system-x86_64 is not installed: apt-get install qemu-system-x86');
  const modules = (options.modules ?? []).map((m) => ({ ...m, file: path.resolve(m.file) }));
  for (const m of modules) {
    if (!fs.statSync(m.file, { throwIfNoEntry: false })?.isFile()) throw new VmError(`module ${m.file}: no such file`);
  }
  const disks = (options.disks ?? []).map((d) => path.resolve(d));
  if (disks.length > 26) throw new VmError('at most 26 disks');
  for (const d of disks) {
    const stat = fs.statSync(d, { throwIfNoEntry: false });
    if (!stat?.isFile() && !stat?.isBlockDevice()) throw new VmError(`disk ${d}: no such file or block device`);
  }
  const shares = (options.shares ?? []).map((s) => path.resolve(s));
  for (const s of shares) {
    if (!fs.statSync(s, { throwIfNoEntry: false })?.isDirectory()) throw new VmError(`share ${s}: not a directory`);
    if (s === '/') throw new VmError('the host root is in the guest already (read-only); share a directory below it');
  }
  const release = chooseKernel(options.kernel, modules);
  const log = (message: string): void => {
    if (options.verbose) process.stderr.write(`vm: ${message}\n`);
  };

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-vm-'));
  try {
    const env = guestEnvironment({
      ...options.env,
      RUN_IN_VM: '1',
      VM_DISKS: disks.map((_, i) => `/dev/vd${String.fromCharCode(97 + i)}`).join(' '),
    });
    const script = commandScript(options.command, path.resolve(options.cwd ?? process.cwd()), env);
    fs.writeFileSync(path.join(tmp, 'initrd.gz'), buildInitramfs(release, { modules, shares, script }));
    log(`kernel ${release}, initramfs ${(fs.statSync(path.join(tmp, 'initrd.gz')).size / 1024).toFixed(0)} KiB`);

    const ports = {
      stdout: portListener(path.join(tmp, 'stdout.sock'), options.stdout ?? process.stdout),
      stderr: portListener(path.join(tmp, 'stderr.sock'), options.stderr ?? process.stderr),
      status: portListener(path.join(tmp, 'status.sock')),
    };
    const console = path.join(tmp, 'console.log');
    const security = process.getuid?.() === 0 ? 'passthrough' : 'none';
    const kvm = hasHardwareKvm();
    const args = [
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-nic', 'none',
      ...(kvm ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']),
      '-m', options.memory ?? '2G', '-smp', String(options.cpus ?? 2),
      '-kernel', kernelImage(release, log), '-initrd', path.join(tmp, 'initrd.gz'),
      // pci=noacpi: interrupt routing from the BIOS tables, not from slowly emulated ACPI code.
      '-append', 'console=ttyS0 rdinit=/init panic=-1 loglevel=4 mitigations=off pci=noacpi',
      '-serial', `file:${qemuValue(console)}`,
      '-device', 'virtio-rng-pci',
      '-fsdev', `local,id=host,path=/,readonly=on,security_model=${security},multidevs=remap`,
      '-device', 'virtio-9p-pci,fsdev=host,mount_tag=host',
      ...shares.flatMap((dir, i) => [
        '-fsdev', `local,id=share${i},path=${qemuValue(dir)},security_model=${security},multidevs=remap`,
        '-device', `virtio-9p-pci,fsdev=share${i},mount_tag=share${i}`,
      ]),
      ...disks.flatMap((file) => ['-drive', `file=${qemuValue(file)},format=raw,if=virtio,cache=writeback,discard=unmap`]),
      '-device', 'virtio-serial-pci',
      ...Object.entries(PORTS).flatMap(([key, name]) => [
        '-chardev', `socket,id=${key},path=${qemuValue(path.join(tmp, `${key}.sock`))}`,
        '-device', `virtserialport,chardev=${key},name=${name}`,
      ]),
    ];
    log(`qemu-system-x86_64 ${args.map(shellQuote).join(' ')}`);

    const started = Date.now();
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let qemuSays = '';
    qemu.stderr.setEncoding('utf8').on('data', (chunk: string) => { qemuSays += chunk; });
    let stoppedBy: 'timeout' | 'abort' | undefined;
    const stop = (why: 'timeout' | 'abort'): void => {
      stoppedBy ??= why;
      qemu.kill('SIGKILL');
    };
    const timeout = options.timeoutSeconds ?? 600;
    const timer = timeout > 0 ? setTimeout(() => stop('timeout'), timeout * 1000) : undefined;
    const onAbort = (): void => stop('abort');
    options.signal?.addEventListener('abort', onAbort);
    const exit = await new Promise<number | null>((resolve, reject) => {
      qemu.on('error', reject);
      qemu.on('close', (code) => resolve(code));
    }).finally(() => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    });
    for (const port of Object.values(ports)) port.server.close();
    // Each port's socket closes with QEMU; one QEMU never connected never opens.
    const status = await Promise.race([ports.status.done, new Promise<string>((resolve) => setTimeout(() => resolve(''), 2000))]);
    await Promise.race([Promise.all([ports.stdout.done, ports.stderr.done]), new Promise((resolve) => setTimeout(resolve, 2000))]);
    log(`qemu exited (${exit}) after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    const tail = (lines: number): string => {
      const text = fs.existsSync(console) ? fs.readFileSync(console, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '';
      return `${text ? `---- guest console (last lines) ----\n${text}\n` : ''}${qemuSays ? `---- qemu ----\n${qemuSays}` : ''}`;
    };
    if (stoppedBy === 'abort') return 130;
    if (stoppedBy === 'timeout') {
      process.stderr.write(`vm: timed out after ${timeout} s; the VM was stopped\n${tail(15)}`);
      return EXIT_TIMEOUT;
    }
    const code = /^\d+$/.test(status.trim()) ? Number(status.trim()) : undefined;
    if (code === undefined) {
      process.stderr.write(`vm: the guest stopped without an exit status (qemu exit ${exit})\n${tail(40)}`);
      return EXIT_VM;
    }
    if (options.verbose && code !== 0) process.stderr.write(tail(15));
    return code;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------------------------
// command line

const USAGE = `Usage: node dist/test/vm/vm.js [options] -- COMMAND [ARG...]
Runs COMMAND as root inside an installed Debian kernel under QEMU, on this machine's programs,
and exits with its status (${EXIT_TIMEOUT}: timed out; ${EXIT_VM}: the VM or a module failed).

  --kernel RELEASE     kernel to boot (default: the modules', else the newest installed)
  --disk FILE          attach a raw image as /dev/vda, /dev/vdb, ... (repeatable)
  --insmod 'KO [PARAMS]'  load a module file before COMMAND (repeatable, in order)
  --share DIR          mount a host directory read-write at its path (repeatable;
                       default: the current directory)
  --env NAME=VALUE     set a variable for COMMAND (the host environment is forwarded)
  --timeout SECONDS    stop the VM after this long (default 600; 0: never)
  --mem SIZE           guest memory (default 2G)
  --list-kernels       print the kernels it can boot, newest last
  -v, --verbose        progress and the QEMU command line on stderr
`;

async function cli(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      kernel: { type: 'string' },
      disk: { type: 'string', multiple: true },
      insmod: { type: 'string', multiple: true },
      share: { type: 'string', multiple: true },
      env: { type: 'string', multiple: true },
      timeout: { type: 'string' },
      mem: { type: 'string' },
      'list-kernels': { type: 'boolean' },
      verbose: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values['list-kernels']) {
    process.stdout.write(listKernels().map((r) => `${r}\n`).join(''));
    return 0;
  }
  const env: Record<string, string> = {};
  for (const pair of values.env ?? []) {
    const match = /^([A-Za-z_]\w*)=(.*)$/s.exec(pair);
    if (!match) throw new VmError(`--env wants NAME=VALUE, got ${pair}`);
    env[match[1]] = match[2]!;
  }
  const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
  if (timeout !== undefined && !(Number.isInteger(timeout) && timeout >= 0)) throw new VmError(`--timeout wants whole seconds, got ${values.timeout}`);
  const abort = new AbortController();
  process.once('SIGINT', () => abort.abort());
  process.once('SIGTERM', () => abort.abort());
  return runInVm({
    command: positionals,
    kernel: values.kernel,
    disks: values.disk,
    modules: (values.insmod ?? []).map((word) => {
      const [file, ...params] = word.trim().split(/\s+/);
      return { file: file, params: params.join(' ') };
    }),
    shares: values.share ?? (process.cwd() === '/' ? [] : [process.cwd()]),
    env,
    timeoutSeconds: timeout,
    memory: values.mem,
    verbose: values.verbose,
    signal: abort.signal,
  });
}

if (require.main === module) {
  cli(process.argv.slice(2)).then(
    (status) => { process.exitCode = status; },
    (err: unknown) => {
      const known = err instanceof VmError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
      process.stderr.write(`vm: error: ${known ? (err as Error).message : (err as Error)?.stack ?? String(err)}\n`);
      process.exitCode = EXIT_VM;
    },
  );
}

// Loop devices, filesystems and mounts for tests that need real block devices. Everything made
// here is undone by the returned cleanup, which the tests call from after() hooks.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { DeviceId } from '../../../src/core/devices';

const SEARCH_PATH = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin', '/bin']);

export function findCommand(name: string): string | undefined {
  for (const dir of SEARCH_PATH) {
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

function run(command: string, args: string[]): string {
  const executable = findCommand(command);
  if (executable === undefined) throw new Error(`${command} is not installed`);
  return execFileSync(executable, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** Why loop devices cannot be used here, or undefined when they can. */
export function loopDevicesUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'loop devices and mounts need root';
  for (const command of ['losetup', 'mount', 'umount']) {
    if (findCommand(command) === undefined) return `${command} is not installed`;
  }
  if (!fs.existsSync('/dev/loop-control')) return 'the kernel has no loop device support (/dev/loop-control)';
  return undefined;
}

/** major:minor of a block device, as the kernel lists it in sysfs. */
export function blockDeviceNumber(devicePath: string): DeviceId {
  const [major, minor] = fs.readFileSync(`/sys/class/block/${path.basename(devicePath)}/dev`, 'utf8')
    .trim().split(':').map(Number);
  return { major: major, minor: minor };
}

/** major:minor of the device holding a file's filesystem (st_dev, glibc encoding). */
export function fileSystemDeviceNumber(filePath: string): DeviceId {
  const dev = fs.statSync(filePath, { bigint: true }).dev;
  return {
    major: Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)),
    minor: Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn)),
  };
}

export interface LoopDevice extends DeviceId {
  path: string;
  directIo: boolean;
  detach(): void;
}

export interface LoopOptions {
  /** Read the backing file with O_DIRECT instead of through its page cache. */
  directIo?: boolean;
  sectorSize?: number;
}

export function attachLoopDevice(backingFile: string, options: LoopOptions = {}): LoopDevice {
  const args = ['--find', '--show'];
  if (options.directIo) args.push('--direct-io=on');
  if (options.sectorSize !== undefined) args.push('--sector-size', String(options.sectorSize));
  const device = run('losetup', [...args, backingFile]);
  let attached = true;
  return {
    path: device,
    directIo: run('losetup', ['--noheadings', '--raw', '--output', 'DIO', device]) === '1',
    ...blockDeviceNumber(device),
    detach() {
      if (!attached) return;
      run('losetup', ['--detach', device]);
      attached = false;
    },
  };
}

export type FilesystemType = 'ext2' | 'ext4' | 'xfs' | 'btrfs';

/** Extra mkfs options: ext4's inline_data stores tiny files inside their inode. */
export interface MkfsOptions {
  extraArgs?: string[];
}

export function makeFilesystem(device: string, type: FilesystemType, options: MkfsOptions = {}): void {
  const force = type === 'xfs' || type === 'btrfs' ? '-f' : '-F';
  run(`mkfs.${type}`, ['-q', force, ...(options.extraArgs ?? []), device]);
}

export interface Mount {
  dir: string;
  unmount(): void;
}

export function mount(device: string): Mount {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-mnt-'));
  run('mount', [device, dir]);
  let mounted = true;
  return {
    dir,
    unmount() {
      if (mounted) run('umount', [dir]);
      mounted = false;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A loop device over a new sparse image with a mounted filesystem, and how to undo it all. */
export interface ScratchFilesystem {
  device: LoopDevice;
  mount: Mount;
  cleanup(): void;
}

export function scratchFilesystem(type: FilesystemType, sizeBytes: number, options: MkfsOptions = {}): ScratchFilesystem {
  const imageDir = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-img-'));
  const image = path.join(imageDir, `${type}.img`);
  fs.writeFileSync(image, '');
  fs.truncateSync(image, sizeBytes);
  const undo: (() => void)[] = [() => fs.rmSync(imageDir, { recursive: true, force: true })];
  const cleanup = (): void => {
    const errors: unknown[] = [];
    for (const step of undo.reverse()) {
      try {
        step();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, `cleaning up the ${type} scratch filesystem failed`);
  };
  try {
    const device = attachLoopDevice(image);
    undo.push(() => device.detach());
    makeFilesystem(device.path, type, options);
    const mounted = mount(device.path);
    undo.push(() => mounted.unmount());
    return { device, mount: mounted, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
}

/**
 * Leaves the filesystem's free space scattered in single 4 KiB blocks: fills it with a file whose
 * every other block is zero, then has fallocate(1) punch those zero blocks out.
 */
export function fragmentFreeSpace(dir: string): void {
  const filler = path.join(dir, 'filler');
  const pattern = Buffer.alloc(1024 * 1024);
  for (let block = 0; block < pattern.length; block += 8192) pattern.fill(0xab, block, block + 4096);
  const fd = fs.openSync(filler, 'w');
  try {
    for (;;) fs.writeSync(fd, pattern);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
  run('fallocate', ['--dig-holes', filler]);
}

/** `df -B1` of a directory: the numbers statvfs gives, as df computes them. */
export function dfBytes(dir: string): { size: number; used: number; avail: number } {
  const line = run('df', ['-B1', '--output=size,used,avail', dir]).split('\n')[1];
  const [size, used, avail] = line.trim().split(/\s+/).map(Number);
  return { size: size, used: used, avail: avail };
}

// Test helpers for storage: a fake sysfs tree laid out like the kernel's (symlinks from /block,
// /class/block and /dev/block into /devices), a fake blkid, a logger that keeps its records,
// and loop devices with partitions on the real host.
import bunyan from 'bunyan';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { BlkidProbe, BlkidValues } from '../../src/host/blkid';
import type { Logger } from '../../src/core/log';
import { attachLoopDevice, findCommand, type LoopDevice } from '../native/helpers/loop';

export interface FakePartition {
  name: string;
  dev: string;
  start: number;
  size: number;
  number?: number;
}

export interface FakeDevice {
  name: string;
  dev: string;
  /** 512-byte sectors, or any text to plant garbage. */
  size: number | string;
  logical?: number;
  physical?: number;
  removable?: string;
  /** SCSI device type (/sys/block/N/device/type). */
  scsiType?: string;
  virtual?: boolean;
  partitions?: FakePartition[];
  /** Names of the devices this one is built on; their holders/ are filled in. */
  slaves?: string[];
  /** Attribute files (relative to the device directory) to overwrite, or to remove with null. */
  attrs?: Record<string, string | null>;
}

function write(file: string, content: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${content}\n`);
}

function link(target: string, at: string): void {
  fs.mkdirSync(path.dirname(at), { recursive: true });
  fs.symlinkSync(target, at);
}

/** Writes a sysfs tree under root/sys and returns that directory. */
export function fakeSysfs(root: string, devices: FakeDevice[]): string {
  const sys = path.join(root, 'sys');
  fs.mkdirSync(path.join(sys, 'block'), { recursive: true });
  fs.mkdirSync(path.join(sys, 'devices', 'virtual', 'block'), { recursive: true });
  const dirs = new Map<string, string>();
  for (const device of devices) {
    const parent = device.virtual ? path.join(sys, 'devices', 'virtual') : path.join(sys, 'devices', 'pci0000:00', `host-${device.name}`);
    const dir = path.join(parent, 'block', device.name);
    dirs.set(device.name, dir);
    write(path.join(dir, 'dev'), device.dev);
    write(path.join(dir, 'size'), String(device.size));
    write(path.join(dir, 'removable'), device.removable ?? '0');
    write(path.join(dir, 'alignment_offset'), '0');
    write(path.join(dir, 'queue', 'logical_block_size'), String(device.logical ?? 512));
    write(path.join(dir, 'queue', 'physical_block_size'), String(device.physical ?? device.logical ?? 512));
    write(path.join(dir, 'uevent'), `DEVNAME=${device.name.replace(/!/g, '/')}\nDEVTYPE=disk`);
    fs.mkdirSync(path.join(dir, 'holders'));
    fs.mkdirSync(path.join(dir, 'slaves'));
    if (!device.virtual) {
      link(parent, path.join(dir, 'device'));
      if (device.scsiType !== undefined) write(path.join(parent, 'type'), device.scsiType);
    }
    link(dir, path.join(sys, 'block', device.name));
    link(dir, path.join(sys, 'class', 'block', device.name));
    link(dir, path.join(sys, 'dev', 'block', device.dev));
    for (const [i, part] of (device.partitions ?? []).entries()) {
      const partDir = path.join(dir, part.name);
      dirs.set(part.name, partDir);
      write(path.join(partDir, 'partition'), String(part.number ?? i + 1));
      write(path.join(partDir, 'dev'), part.dev);
      write(path.join(partDir, 'start'), String(part.start));
      write(path.join(partDir, 'size'), String(part.size));
      write(path.join(partDir, 'alignment_offset'), '0');
      write(path.join(partDir, 'uevent'), `DEVNAME=${part.name.replace(/!/g, '/')}\nDEVTYPE=partition`);
      fs.mkdirSync(path.join(partDir, 'holders'));
      link(partDir, path.join(sys, 'class', 'block', part.name));
      link(partDir, path.join(sys, 'dev', 'block', part.dev));
    }
  }
  for (const device of devices) {
    const dir = dirs.get(device.name)!;
    for (const slave of device.slaves ?? []) {
      link(dirs.get(slave)!, path.join(dir, 'slaves', slave));
      link(dir, path.join(dirs.get(slave)!, 'holders', device.name));
    }
    for (const [attr, value] of Object.entries(device.attrs ?? {})) {
      const file = path.join(dir, attr);
      if (value === null) fs.rmSync(file, { force: true });
      else write(file, value);
    }
  }
  return sys;
}

/** blkid answers by device path; an Error value makes that probe fail; unknown paths: {}. */
export function fakeBlkid(answers: Record<string, BlkidValues | Error>): BlkidProbe & { calls: string[] } {
  const calls: string[] = [];
  const probe = async (device: string): Promise<BlkidValues> => {
    calls.push(device);
    const answer = answers[device];
    if (answer instanceof Error) throw answer;
    return { ...(answer ?? {}) };
  };
  return Object.assign(probe, { calls });
}

export interface RecordingLogger {
  log: Logger;
  records: Array<{ level: number; msg: string; [key: string]: unknown }>;
  warnings(): string[];
}

/** The device a record names, or nothing. */
const named = (value: unknown): string => (typeof value === 'string' ? value : '');

export function recordingLogger(): RecordingLogger {
  const records: RecordingLogger['records'] = [];
  const log = bunyan.createLogger({
    name: 'test',
    streams: [{ type: 'raw', level: 'debug', stream: { write: (record: unknown) => { records.push(record as RecordingLogger['records'][0]); } } }],
  });
  return { log, records, warnings: () => records.filter((r) => r.level === bunyan.WARN).map((r) => `${named(r.device ?? r.disk)}: ${r.msg}`) };
}

export function sh(command: string, args: string[], input?: string): string {
  const executable = findCommand(command);
  if (executable === undefined) throw new Error(`${command} is not installed`);
  return execFileSync(executable, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] }).trim();
}

/** Writes a partition table with sfdisk (script syntax: see sfdisk(8)). */
export function partitionImage(file: string, script: string): void {
  sh('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], script);
}

/**
 * A loop device whose partitions the kernel knows: losetup --partscan, or partx --add when the
 * kernel has no parser for the table (some cloud kernels are built without them).
 */
export function attachPartitionedLoop(file: string): LoopDevice & { partitions: string[] } {
  const loop = attachLoopDevice(file);
  const name = path.basename(loop.path);
  const partitions = (): string[] => fs.readdirSync(`/sys/class/block/${name}`).filter((entry) => entry.startsWith(`${name}p`)).sort();
  try {
    sh('blockdev', ['--rereadpt', loop.path]);
  } catch {
    // partscan is off for this loop device; partx below adds the partitions itself
  }
  if (partitions().length === 0) sh('partx', ['--add', loop.path]);
  return {
    ...loop,
    partitions: partitions().map((p) => `/dev/${p}`),
    // Partitions that partx added outlive the loop device's detach on some kernels.
    detach() {
      try {
        sh('partx', ['--delete', loop.path]);
      } catch {
        // none left
      }
      loop.detach();
    },
  };
}

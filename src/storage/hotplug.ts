// Hot-plug: tells the lifecycle layer when a disk appears in or disappears from the listing.
//
// A cheap fingerprint of /sys/block (each device's name, number and size) is compared on every
// check, and only a change costs a full listing, which is then diffed against the last one. Checks
// run on every kernel block uevent when udev runs (`udevadm monitor --kernel`, one child process),
// and on a timer otherwise (containers, initramfs-less VMs). Size is part of the fingerprint
// because attaching a loop device or inserting a medium changes only the size.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import readline from 'node:readline';
import type { Logger } from '../core/log';
import type { Disk, DiskSource, ListOptions } from './disks';
import { showDevice } from '../core/devices';
import { Sysfs } from '../host/sysfs';

export interface DiskWatcherOptions {
  source: DiskSource;
  log: Logger;
  /** Which disks count (default: the default listing, as auto_init uses). */
  list?: ListOptions;
  sysRoot?: string;
  /** auto: udev when its control socket exists, else polling. */
  mode?: 'auto' | 'udev' | 'poll';
  pollIntervalMs?: number;
  /** Quiet time after a uevent before checking: a disk comes with a burst of partition events. */
  settleMs?: number;
}

const DEFAULT_POLL_INTERVAL_MS = 2000;
const DEFAULT_SETTLE_MS = 200;
/** Present while udevd runs. */
const UDEV_CONTROL = '/run/udev/control';

/** A disk keeps its identity while both its name and its number stay. */
const diskKey = (disk: Disk): string => `${disk.name}@${showDevice(disk.device)}`;

/**
 * Emits 'added' and 'removed' with the Disk (for 'removed', as it was last listed) for changes
 * after start(). A resize is not an event. stop() ends the timer and the udevadm child.
 */
export class DiskWatcher extends EventEmitter {
  private readonly sysfs: Sysfs;
  private known = new Map<string, Disk>();
  private fingerprint = '';
  private timer: NodeJS.Timeout | null = null;
  private child: ChildProcess | null = null;
  private checking: Promise<void> | null = null;
  private checkAgain = false;
  private stopped = false;

  constructor(private readonly options: DiskWatcherOptions) {
    super();
    this.sysfs = new Sysfs(options.sysRoot);
  }

  /** The disks listed now; events report changes from this point on. */
  async start(): Promise<Disk[]> {
    this.fingerprint = await this.takeFingerprint();
    const disks = await this.options.source.list(this.options.list);
    this.known = new Map(disks.map((disk) => [diskKey(disk), disk]));
    const mode = this.options.mode ?? 'auto';
    if (mode === 'udev' || (mode === 'auto' && fs.existsSync(UDEV_CONTROL))) {
      await this.watchUevents();
      // Changes between the listing above and the monitor's subscription sent no event we saw.
      await this.check();
    } else {
      this.poll();
    }
    return [...this.known.values()];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const child = this.child;
    this.child = null;
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('close', resolve));
      child.kill();
      await exited;
    }
    await this.checking;
  }

  /** Checks now (also what timers and uevents call); resolves once the check is done. */
  check(): Promise<void> {
    if (this.checking !== null) {
      this.checkAgain = true; // something changed while a check was running: look once more
      return this.checking;
    }
    this.checking = (async () => {
      do {
        this.checkAgain = false;
        await this.checkOnce().catch((err: unknown) => this.options.log.warn({ err }, 'disk hot-plug check failed'));
      } while (this.checkAgain && !this.stopped);
      this.checking = null;
    })();
    return this.checking;
  }

  private async checkOnce(): Promise<void> {
    const fingerprint = await this.takeFingerprint();
    if (fingerprint === this.fingerprint || this.stopped) return;
    const disks = await this.options.source.list(this.options.list);
    this.fingerprint = fingerprint;
    const current = new Map(disks.map((disk) => [diskKey(disk), disk]));
    const previous = this.known;
    this.known = current;
    for (const [key, disk] of previous) if (!current.has(key)) this.emit('removed', disk);
    for (const [key, disk] of current) if (!previous.has(key)) this.emit('added', disk);
  }

  private async takeFingerprint(): Promise<string> {
    const parts: string[] = [];
    for (const name of await this.sysfs.blockNames()) {
      const dev = await this.sysfs.read(name, 'dev').catch(() => '?');
      const size = await this.sysfs.read(name, 'size').catch(() => '?');
      parts.push(`${name}=${dev}/${size}`);
    }
    return parts.join(' ');
  }

  private poll(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.check().then(() => this.poll());
    }, this.options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS);
  }

  /**
   * One check per burst of uevents; falls back to polling if udevadm is missing or dies.
   * Resolves once udevadm is listening (it prints a banner first) or polling took over.
   */
  private watchUevents(): Promise<void> {
    const child = spawn('udevadm', ['monitor', '--kernel', '--subsystem-match=block'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    const settleMs = this.options.settleMs ?? DEFAULT_SETTLE_MS;
    let listening: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => {
      // Never wait forever on a banner that a future udevadm might not print.
      const giveUp = setTimeout(resolve, 2000);
      listening = () => {
        clearTimeout(giveUp);
        resolve();
      };
    });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      listening();
      if (!line.startsWith('KERNEL[') || this.stopped) return;
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = setTimeout(() => {
        this.timer = null;
        void this.check();
      }, settleMs);
    });
    child.stderr.resume();
    const fallBack = (reason: unknown): void => {
      listening();
      if (this.stopped || this.child !== child) return;
      this.child = null;
      if (this.timer !== null) clearTimeout(this.timer);
      this.options.log.warn({ reason }, 'udevadm monitor is not running: polling /sys/block for disk changes instead');
      this.poll();
    };
    child.on('error', fallBack);
    child.on('exit', (code, signal) => fallBack(`udevadm monitor exited (${signal ?? code})`));
    return ready;
  }
}

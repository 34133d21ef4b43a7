// A scratch root: this machine's own filesystem seen through an overlay whose writes land in a
// filesystem of their own, with chosen paths taken away (the system's Node, the checkout), and
// fresh /proc, /dev, /sys, /run and /tmp. Commands run in it with chroot. It stands in for another machine: one
// without Node.js, where a package installs as on a real host, and after which the overlay's
// upper layer lists exactly what changed. Needs root and overlayfs.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function must(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr || result.error?.message}`);
}

export class ScratchRoot {
  private constructor(
    private readonly base: string,
    /** The root as commands in it see it. */
    readonly dir: string,
    /** The overlay's upper layer: every file created or changed in the root, and whiteouts. */
    readonly upper: string,
  ) {}

  /**
   * The root: `lower` (this machine's / unless another system's tree is given), without `remove`
   * (absolute paths, files or folders) and with the checkout hidden. `volumes` are folders made
   * in it on a block device's filesystem, not the overlay's: snapstores must be there, as on a
   * real machine.
   */
  static create(options: { remove?: string[]; volumes?: string[]; lower?: string } = {}): ScratchRoot {
    const { remove = [], volumes = [], lower = '/' } = options;
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-root-'));
    const layers = path.join(base, 'layers');
    const dir = path.join(base, 'root');
    fs.mkdirSync(layers);
    fs.mkdirSync(dir);
    // The upper layer on a filesystem of its own (an upper folder inside the lower filesystem would
    // overlap it), and a real one: snapstores need extents, which tmpfs does not have.
    const image = path.join(base, 'layers.ext4');
    const root = new ScratchRoot(base, dir, path.join(layers, 'upper'));
    try {
      fs.writeFileSync(image, '');
      fs.truncateSync(image, 4 * 1024 ** 3);
      must('mkfs.ext4', ['-q', '-F', image]);
      must('mount', ['-o', 'loop', image, layers]);
      fs.mkdirSync(root.upper);
      fs.mkdirSync(path.join(layers, 'work'));
      must('mount', ['-t', 'overlay', 'scratch-root', '-o', `lowerdir=${lower},upperdir=${root.upper},workdir=${path.join(layers, 'work')}`, dir]);
      must('mount', ['-t', 'proc', 'proc', path.join(dir, 'proc')]);
      for (const tree of ['dev', 'sys']) {
        must('mount', ['--rbind', `/${tree}`, path.join(dir, tree)]);
        // Where / is shared, unmounting these later must not unmount the host's own.
        must('mount', ['--make-rslave', path.join(dir, tree)]);
      }
      for (const tmpfs of ['run', 'tmp']) must('mount', ['-t', 'tmpfs', '-o', tmpfs === 'tmp' ? 'mode=1777' : 'mode=0755', tmpfs, path.join(dir, tmpfs)]);
      // The checkout and its node_modules: what runs in the root must bring its own.
      const checkout = path.resolve(__dirname, '../../..');
      fs.mkdirSync(path.join(dir, checkout), { recursive: true });
      must('mount', ['-t', 'tmpfs', 'no-checkout', path.join(dir, checkout)]);
      for (const gone of remove) fs.rmSync(path.join(dir, gone), { recursive: true, force: true });
      volumes.forEach((volume, index) => {
        const real = path.join(layers, `volume${index}`);
        fs.mkdirSync(real);
        fs.mkdirSync(path.join(dir, volume), { recursive: true });
        must('mount', ['--bind', real, path.join(dir, volume)]);
      });
    } catch (error) {
      root.close();
      throw error;
    }
    return root;
  }

  /** A path inside the root, as the host sees it. */
  path(inside: string): string {
    return path.join(this.dir, inside);
  }

  private chrootArgs(args: string[]): string[] {
    return [this.dir, '/usr/bin/env', '-i', `PATH=${PATH}`, 'HOME=/root', 'LANG=C.UTF-8', ...args];
  }

  run(args: string[]): Result {
    const result = spawnSync('chroot', this.chrootArgs(args), { encoding: 'utf8', timeout: 300_000 });
    if (result.error) throw result.error;
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  }

  /** `run`, failing with the command's output unless it exits 0. */
  ok(args: string[]): string {
    const result = this.run(args);
    if (result.status !== 0) throw new Error(`${args.join(' ')} exited ${result.status}:\n${result.stdout}${result.stderr}`);
    return result.stdout;
  }

  spawn(args: string[], options: SpawnOptions = {}): ChildProcess {
    return spawn('chroot', this.chrootArgs(args), { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  }

  /** Files the root gained or changed, relative to it, whiteouts (deletions) apart. */
  changes(): string[] {
    const found: string[] = [];
    const walk = (dir: string) => {
      for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const file = path.join(dir, entry.name);
        if (entry.isDirectory()) walk(file);
        else if (!entry.isCharacterDevice()) found.push(path.relative(this.upper, file));
      }
    };
    walk(this.upper);
    return found.sort();
  }

  close(): void {
    spawnSync('umount', ['-R', this.dir]);
    spawnSync('umount', [path.join(this.base, 'layers')]);
    fs.rmSync(this.base, { recursive: true, force: true });
  }
}

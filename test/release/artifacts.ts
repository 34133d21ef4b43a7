// The release under test: dist/release's files, built by `npm run release` (CI runs it before the
// tests) or here when they are missing or were built from another commit.
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ScratchRoot } from '../helpers/scratch-root';

export const ROOT = path.resolve(__dirname, '../../..');
const PACKAGE = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
export const VERSION = PACKAGE.version;
export const NAME = `${PACKAGE.name}-${VERSION}-linux-x64`;
export const TARBALL = path.join(ROOT, 'dist', 'release', `${NAME}.tar.gz`);
export const DEB = path.join(ROOT, 'dist', 'release', `${PACKAGE.name}_${VERSION}_amd64.deb`);
export const RPM = path.join(ROOT, 'dist', 'release', `${PACKAGE.name}-${VERSION}-1.x86_64.rpm`);

/** Every place Debian's, NodeSource's or a hand install puts a Node: a scratch root removes them. */
export const NODE_PATHS = ['/usr/bin/node', '/usr/bin/nodejs', '/usr/local/bin/node', '/usr/lib/node_modules', '/usr/include/node', '/usr/share/nodejs', '/usr/share/doc/nodejs'];

function git(args: string[]): string {
  return spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' }).stdout.trim();
}

/** The commit the checkout is at, as release/build.js records it. */
export function checkoutCommit(): string {
  const dirty = git(['status', '--porcelain', '--untracked-files=no']) !== '';
  return `${git(['rev-parse', 'HEAD'])}${dirty ? '-dirty' : ''}`;
}

/** The commit a built tarball records, or undefined when there is none. */
function builtCommit(): string | undefined {
  if (![TARBALL, DEB, RPM].every((file) => fs.existsSync(file))) return undefined;
  const info = spawnSync('tar', ['-xzOf', TARBALL, `${NAME}/app/build-info.json`], { encoding: 'utf8' });
  return info.status === 0 ? (JSON.parse(info.stdout) as { commit: string }).commit : undefined;
}

/** What the release is made of. */
const SOURCES = /^(src|release|contrib)\/|^(package\.json|package-lock\.json|binding\.gyp|README\.md)$/;

/** Whether a source the checkout changed is newer than the built tarball. */
function changedSinceBuilt(): boolean {
  const built = fs.statSync(TARBALL).mtimeMs;
  const changed = git(['status', '--porcelain', '--untracked-files=all']).split('\n').map((line) => line.slice(3)).filter((file) => SOURCES.test(file)).map((file) => path.join(ROOT, file));
  return changed.some((file) => fs.existsSync(file) && fs.statSync(file).mtimeMs > built);
}

/** Builds the release unless dist/release already holds this checkout's. */
export function ensureRelease(): void {
  const commit = checkoutCommit();
  // With uncommitted changes the commit cannot tell two trees apart: the files' times do.
  if (builtCommit() === commit && !(commit.endsWith('-dirty') && changedSinceBuilt())) return;
  const result = spawnSync(process.execPath, [path.join(ROOT, 'release', 'build.js')], {
    cwd: ROOT, encoding: 'utf8', env: { ...process.env, RELEASE_ALLOW_DIRTY: '1' }, timeout: 1_200_000, maxBuffer: 1 << 26,
  });
  if (result.status !== 0) throw new Error(`npm run release failed:\n${result.stderr}`);
}

/**
 * What a package left in `root` (its overlay's changes), apart from the package manager's own
 * `records`, the account tools' lock and backups, and account files back as they were.
 */
export function leftovers(root: ScratchRoot, records: RegExp): string[] {
  return root.changes().filter((file) => {
    if (records.test(file) || file === 'etc/.pwd.lock' || /^etc\/(passwd|group|shadow|gshadow|subuid|subgid)-$/.test(file)) return false;
    const account = /^etc\/(passwd|group|shadow|gshadow|subuid|subgid)$/.test(file);
    return !(account && fs.existsSync(`/${file}`) && fs.readFileSync(root.path(`/${file}`)).equals(fs.readFileSync(`/${file}`)));
  });
}

/** Unpacks the tarball into `dir` (which must exist); returns the release directory. */
export function unpack(dir: string): string {
  const result = spawnSync('tar', ['-xzf', TARBALL, '-C', dir], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`tar: ${result.stderr}`);
  return path.join(dir, NAME);
}

export interface DemoSummary {
  api: string;
  disks: string[];
}

export interface RunningDemo {
  process: ChildProcess;
  summary: DemoSummary;
  stdout(): string;
  stderr(): string;
  /** SIGINT, then the exit status. */
  stop(): Promise<number | null>;
}

/** The release's demo in `root` (one 32 MiB disk in /srv/demo, which must be a volume), once it serves. */
export async function startDemo(root: ScratchRoot, agent: string): Promise<RunningDemo> {
  const child = root.spawn([agent, 'demo', '--dir', '/srv/demo', '--api-port', '0', '--nbd-port', '0', '--disks', '1', '--disk-size', '32M']);
  let stdout = '';
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const summary = await new Promise<DemoSummary>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const line = stdout.split('\n').find((text) => text.startsWith('{'));
      if (line !== undefined) resolve(JSON.parse(line) as DemoSummary);
    });
    child.on('exit', (code) => reject(new Error(`demo exited ${code}: ${stderr}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  return {
    process: child, summary, stdout: () => stdout, stderr: () => stderr,
    stop: () => {
      child.kill('SIGINT');
      return exited;
    },
  };
}

/** The release's `pull` of the demo's disk into /srv/demo/disk0.raw, which must equal the disk. */
export function pullDemoDisk(root: ScratchRoot, agent: string, summary: DemoSummary): void {
  root.ok([agent, 'pull', '--agent', new URL(summary.api).origin, '--disk', 'disk0', '--out', '/srv/demo/disk0.raw', '--certs', '/srv/demo/certs', '--json']);
  assert.ok(fs.readFileSync(root.path('/srv/demo/disk0.raw')).equals(fs.readFileSync(root.path(summary.disks[0]))), 'the copy is the disk');
}

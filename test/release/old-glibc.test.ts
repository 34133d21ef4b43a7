// The release on an older glibc than it was built on: Debian 11 (glibc 2.31), from before glibc
// 2.34 moved the pthread and dl functions into libc, which is what release/glibc-compat.c
// bridges. debootstrap makes the system from Debian's archive (cached in the temporary folder);
// where the archive cannot be reached, the test says so and skips.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ScratchRoot } from '../helpers/scratch-root';
import { ensureRelease, NAME, pullDemoDisk, startDemo, unpack, VERSION } from './artifacts';

const SYSTEM = path.join(os.tmpdir(), 'csa-debian11-root');
const AGENT = `/opt/${NAME}/bin/coriolis-snapshot-agent`;

/** Debian 11's minimal system, made once; why not, when it cannot be. */
function debian11(): string | undefined {
  const done = path.join(SYSTEM, '.complete');
  if (fs.existsSync(done)) return undefined;
  fs.rmSync(SYSTEM, { recursive: true, force: true });
  const made = spawnSync('debootstrap', ['--variant=minbase', 'bullseye', SYSTEM, 'http://deb.debian.org/debian'], { encoding: 'utf8', timeout: 600_000 });
  if (made.error) return `debootstrap: ${made.error.message}`;
  if (made.status !== 0) return `debootstrap bullseye failed (is deb.debian.org reachable?): ${made.stdout.split('\n').slice(-3).join(' ')}`;
  fs.writeFileSync(done, '');
  return undefined;
}

describe('the release on glibc 2.31', { timeout: 1_500_000 }, () => {
  let root: ScratchRoot | undefined;
  let unavailable: string | undefined;
  before(() => {
    ensureRelease();
    unavailable = debian11();
    if (unavailable !== undefined) return;
    root = ScratchRoot.create({ lower: SYSTEM, volumes: ['/srv/demo'] });
    unpack(root.path('/opt'));
  });
  after(() => root?.close());

  test('runs the demo and copies its disk with pull', async (t) => {
    if (root === undefined) {
      t.skip(unavailable);
      return;
    }
    assert.match(root.ok(['ldd', '--version']).split('\n')[0], /2\.31$/);
    assert.ok(fs.existsSync(root.path('/lib/x86_64-linux-gnu/libpthread.so.0')) && root.run(['sh', '-c', 'command -v node']).status !== 0);
    assert.equal(root.ok([AGENT, 'version']).split('\n')[0], VERSION);
    const demo = await startDemo(root, AGENT);
    t.after(() => demo.process.kill('SIGKILL'));
    pullDemoDisk(root, AGENT, demo.summary);
    assert.equal(await demo.stop(), 0);
    assert.equal(demo.stderr(), '');
  });
});

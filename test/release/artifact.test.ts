// The release tarball: what it holds, that it loads on the oldest hosts it claims (glibc 2.28),
// and that its name, its `version` and its build record agree on version and commit.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkoutCommit, ensureRelease, NAME, ROOT, TARBALL, unpack, VERSION } from './artifacts';

// release/elf.js is plain JavaScript, outside the TypeScript project.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { checkElf, isElf } = require(path.join(ROOT, 'release', 'elf.js')) as { checkElf: (file: string) => string[]; isElf: (file: string) => boolean };

/** The newest GLIBC_ version among a file's undefined symbols, read with objdump (not readelf, as the build does). */
function newestGlibc(file: string): string {
  const dump = spawnSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout;
  const versions = [...dump.matchAll(/\*UND\*.*\(GLIBC_([0-9.]+)\)/g)].map((m) => m[1].split('.').map(Number));
  versions.sort((a, b) => a[0] - b[0] || a[1] - b[1] || (a[2] ?? 0) - (b[2] ?? 0));
  return versions.at(-1)?.join('.') ?? 'none';
}

function elfFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath, entry.name))
    .filter((file) => isElf(file));
}

describe('the release tarball', { timeout: 1_500_000 }, () => {
  let scratch: string;
  let dir: string;
  before(() => {
    ensureRelease();
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-release-'));
    dir = unpack(scratch);
  });
  after(() => fs.rmSync(scratch, { recursive: true, force: true }));

  test('holds the command, Node, both addons, the unit, the udev rule, the sample config and the README', () => {
    const listed = spawnSync('tar', ['-tzf', TARBALL], { encoding: 'utf8', maxBuffer: 1 << 26 }).stdout.split('\n');
    for (const file of [
      'bin/coriolis-snapshot-agent', 'bin/bunyan', 'node/bin/node', 'node/LICENSE', 'app/package.json', 'app/build-info.json',
      'app/dist/src/main.js', 'app/dist/src/api/openapi.json', 'app/build/Release/coriolis_native.node',
      'app/node_modules/better-sqlite3/build/Release/better_sqlite3.node', 'app/node_modules/koa/package.json',
      'contrib/coriolis-snapshot-agent.service', 'contrib/99-veeamsnap.rules', 'contrib/config.toml.sample',
      'contrib/coriolis-snapshot-agent.logrotate', 'README.md',
    ]) assert.ok(listed.includes(`${NAME}/${file}`), `${file} is in the tarball`);
    const unwanted = listed.filter((file) => /\/dist\/(test|bench)\/|\.ts$|\.o$|\/node_modules\/(typescript|eslint|node-gyp|@types)\/|\/better-sqlite3\/(deps|src)\//.test(file));
    assert.deepEqual(unwanted, [], 'no tests, sources, object files or development modules');
  });

  test('every ELF file in it asks glibc for nothing newer than 2.28, and the addons carry their own C++ runtime', () => {
    const files = elfFiles(dir);
    assert.deepEqual(files.map((file) => path.relative(dir, file)).sort(), [
      'app/build/Release/coriolis_native.node', 'app/node_modules/better-sqlite3/build/Release/better_sqlite3.node', 'node/bin/node',
    ]);
    for (const file of files) {
      const newest = newestGlibc(file);
      assert.ok(newest === 'none' || newest.localeCompare('2.28', undefined, { numeric: true }) <= 0, `${path.relative(dir, file)} needs GLIBC_${newest}`);
    }
    for (const addon of files.filter((file) => file.endsWith('.node'))) {
      const dynamic = spawnSync('readelf', ['-d', addon], { encoding: 'utf8' }).stdout;
      assert.doesNotMatch(dynamic, /libstdc\+\+/, `${path.basename(addon)} links libstdc++ statically (RHEL 8's is older than the compiler's)`);
    }
  });

  test('the build\'s own check names a symbol too new for glibc 2.28', () => {
    const source = path.join(scratch, 'new.c');
    const library = path.join(scratch, 'new.so');
    fs.writeFileSync(source, '#include <stdlib.h>\nunsigned int pick(void) { return arc4random(); }\n');
    const built = spawnSync('cc', ['-shared', '-fPIC', source, '-o', library], { encoding: 'utf8' });
    assert.equal(built.status, 0, built.stderr);
    assert.deepEqual(checkElf(library), ['needs GLIBC_2.36 from libc.so.6 (at most GLIBC_2.28): arc4random']);
  });

  test('its name, `version` and build record agree on the version, and record the commit it was built from', () => {
    assert.equal(NAME, `coriolis-snapshot-agent-${VERSION}-linux-x64`);
    const info = JSON.parse(fs.readFileSync(path.join(dir, 'app', 'build-info.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(info.version, VERSION);
    assert.equal(info.commit, checkoutCommit());
    const version = spawnSync(path.join(dir, 'bin', 'coriolis-snapshot-agent'), ['version'], { encoding: 'utf8' });
    assert.equal(version.status, 0, version.stderr);
    assert.equal(version.stdout, `${VERSION}\ncommit ${checkoutCommit()}\nnode ${String(info.node)}\n`);
  });
});

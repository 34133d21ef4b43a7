// What an ELF file needs from the host, read with binutils' readelf, against the oldest hosts the
// release claims: RHEL 8 and Debian 10 (glibc 2.28, GCC 8's C++ runtime).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');

/** Newest version of each runtime's symbols a file may ask for. */
const NEWEST = { GLIBC: '2.28', GLIBCXX: '3.4.25', CXXABI: '1.3.11', GCC: '8.0.0' };
/** Libraries every glibc host has; Node itself needs all of them. */
const LIBRARIES = new Set(['libc.so.6', 'libm.so.6', 'libdl.so.2', 'libpthread.so.0', 'librt.so.1', 'libstdc++.so.6', 'libgcc_s.so.1', 'ld-linux-x86-64.so.2']);

function isElf(file) {
  const fd = fs.openSync(file, 'r');
  try {
    const magic = Buffer.alloc(4);
    return fs.readSync(fd, magic, 0, 4, 0) === 4 && magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } finally {
    fs.closeSync(fd);
  }
}

function newer(version, limit) {
  const a = version.split('.').map(Number);
  const b = limit.split('.').map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return false;
}

/** The libraries a file needs and the symbol versions it asks of each: readelf -d and -V. */
function needs(file) {
  const result = spawnSync('readelf', ['--wide', '-d', '-V', file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (result.status !== 0) throw new Error(`readelf ${file}: ${result.stderr || result.error?.message}`);
  const libraries = [...result.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
  const versions = [];
  // .gnu.version_r lists "File: libc.so.6 ..." then that file's "Name: GLIBC_2.28 ..." lines.
  const section = result.stdout.split(/Version needs section/)[1] ?? '';
  let from = '';
  for (const line of section.split('\n')) {
    const fileLine = /File: (\S+)/.exec(line);
    if (fileLine) from = fileLine[1];
    const nameLine = /Name: ([A-Z]+)_([0-9.]+)/.exec(line);
    if (nameLine) versions.push({ from, runtime: nameLine[1], version: nameLine[2] });
  }
  return { libraries, versions };
}

/** The undefined symbols that ask for one version, from objdump -T. */
function symbolsOf(file, version) {
  const result = spawnSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  return result.stdout.split('\n').filter((line) => line.includes('*UND*') && line.includes(`(${version})`)).map((line) => line.trim().split(/\s+/).pop());
}

/** Why the file would not load on the oldest supported host; empty when it would. */
function checkElf(file) {
  const { libraries, versions } = needs(file);
  const problems = libraries.filter((lib) => !LIBRARIES.has(lib)).map((lib) => `needs ${lib}, which a host may lack`);
  for (const { from, runtime, version } of versions) {
    const limit = NEWEST[runtime];
    if (limit !== undefined && newer(version, limit)) {
      problems.push(`needs ${runtime}_${version} from ${from} (at most ${runtime}_${limit}): ${symbolsOf(file, `${runtime}_${version}`).join(', ')}`);
    }
  }
  return problems;
}

module.exports = { checkElf, isElf };

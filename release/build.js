#!/usr/bin/env node
// `npm run release`: from this checkout, the artifact an operator installs on a host with no
// Node.js and no compiler, and the packages around it, in dist/release/:
//   coriolis-snapshot-agent-VERSION-linux-x64.tar.gz   a self-contained directory (below)
//   coriolis-snapshot-agent_VERSION_amd64.deb           that directory in /opt, the unit, the user
//   coriolis-snapshot-agent-VERSION-1.x86_64.rpm        the same for RHEL, when rpmbuild is here
// The directory (docs/release.md says why a directory and not a single executable):
//   bin/coriolis-snapshot-agent   the command: the bundled Node runs the agent
//   bin/bunyan                    pretty-prints the agent's JSON logs
//   node/                         the Node runtime this script runs under, and its licence
//   app/                          the compiled agent, its production modules, both native addons
//                                 and build-info.json (version, commit)
//   contrib/                      the systemd unit, the udev rule, the sample config, logrotate
//   README.md
// Every ELF file in it is checked against glibc 2.28 (RHEL 8, Debian 10): the addons are built
// with release/glibc-compat.c and a static libstdc++, and the build fails, naming the symbol, if
// anything would need more.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { checkElf, isElf } = require('./elf');

const root = path.resolve(__dirname, '..');
const out = path.join(root, 'dist', 'release');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const NAME = `coriolis-snapshot-agent-${pkg.version}-linux-x64`;

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: ['ignore', 'inherit', 'inherit'], ...options });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: exit status ${result.status}`);
  return result;
}

/** A compiler's chatter goes to a log that is shown only if the build fails. */
function quietly(command, args, options = {}) {
  const result = spawnSync(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', maxBuffer: 1 << 28 });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: exit status ${result.status}\n${result.stdout}${result.stderr}`);
  return result;
}

function output(command, args, options = {}) {
  return run(command, args, { ...options, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' }).stdout.trim();
}

function step(what) {
  process.stderr.write(`release: ${what}\n`);
}

/** The commit this is built from; a tree with uncommitted changes is refused unless asked for. */
function source() {
  const commit = output('git', ['rev-parse', 'HEAD'], { cwd: root });
  const changed = output('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root });
  if (changed !== '' && process.env.RELEASE_ALLOW_DIRTY !== '1') {
    throw new Error(`uncommitted changes (a release records the commit it is built from; RELEASE_ALLOW_DIRTY=1 builds anyway):\n${changed}`);
  }
  const committed = output('git', ['log', '-1', '--format=%ct'], { cwd: root });
  return { commit: changed === '' ? commit : `${commit}-dirty`, committedAt: Number(committed) };
}

/** The agent's JavaScript, compiled from src/ alone. */
function compile(app, work) {
  step('compiling the agent');
  const outDir = path.join(work, 'tsc');
  run(process.execPath, [require.resolve('typescript/bin/tsc', { paths: [root] }), '-p', root, '--outDir', outDir, '--sourceMap', 'false'], { cwd: root });
  fs.cpSync(path.join(outDir, 'src'), path.join(app, 'dist', 'src'), { recursive: true });
}

/** Not needed at run time: a local build of an addon (rebuilt below), type declarations, source maps. */
const UNSHIPPED = /[\\/]build[\\/](Release|Debug)[\\/]|\.ts$|\.map$/;

/** The production dependencies, as installed here (package-lock.json's versions). */
function dependencies(app) {
  step('copying the production dependencies');
  const listed = output('npm', ['ls', '--omit=dev', '--parseable', '--all'], { cwd: root }).split('\n');
  const top = new Set(listed.map((dir) => path.relative(path.join(root, 'node_modules'), dir)).filter((rel) => rel !== '' && !rel.startsWith('..')).map((rel) => rel.split(`${path.sep}node_modules${path.sep}`)[0]));
  for (const rel of top) {
    fs.cpSync(path.join(root, 'node_modules', rel), path.join(app, 'node_modules', rel), { recursive: true, dereference: true, filter: (src) => !UNSHIPPED.test(src) });
  }
}

/** The C shim that lets an addon built here load on glibc 2.28. */
function compatObject(work) {
  const object = path.join(work, 'glibc-compat.o');
  run('cc', ['-O2', '-fPIC', '-Wall', '-c', path.join(__dirname, 'glibc-compat.c'), '-o', object]);
  return object;
}

function addonEnv(compat) {
  // node-gyp's Makefiles add LDFLAGS to every link.
  return { ...process.env, LDFLAGS: `-static-libstdc++ -Wl,--exclude-libs,ALL ${compat}` };
}

function buildAddons(app, work, compat) {
  step('building the agent\'s addon');
  // Built in a folder under the checkout so that binding.gyp finds node-addon-api.
  const native = path.join(root, 'dist', 'release-native');
  fs.rmSync(native, { recursive: true, force: true });
  fs.mkdirSync(path.join(native, 'src'), { recursive: true });
  fs.copyFileSync(path.join(root, 'binding.gyp'), path.join(native, 'binding.gyp'));
  fs.cpSync(path.join(root, 'src', 'native'), path.join(native, 'src', 'native'), { recursive: true, filter: (src) => !src.endsWith('.ts') });
  quietly(process.execPath, [path.join(root, 'scripts', 'node-gyp.js'), 'rebuild'], { cwd: native, env: addonEnv(compat) });
  fs.mkdirSync(path.join(app, 'build', 'Release'), { recursive: true });
  fs.copyFileSync(path.join(native, 'build', 'Release', 'coriolis_native.node'), path.join(app, 'build', 'Release', 'coriolis_native.node'));
  fs.rmSync(native, { recursive: true, force: true });

  step('building better-sqlite3');
  const sqlite = path.join(app, 'node_modules', 'better-sqlite3');
  quietly(process.execPath, [path.join(root, 'scripts', 'node-gyp.js'), 'rebuild', '--release'], { cwd: sqlite, env: addonEnv(compat) });
  const built = path.join(sqlite, 'build', 'Release', 'better_sqlite3.node');
  const keep = fs.readFileSync(built);
  fs.rmSync(path.join(sqlite, 'build'), { recursive: true });
  fs.rmSync(path.join(sqlite, 'deps'), { recursive: true });
  fs.rmSync(path.join(sqlite, 'src'), { recursive: true });
  fs.mkdirSync(path.dirname(built), { recursive: true });
  fs.writeFileSync(built, keep);
  for (const addon of [built, path.join(app, 'build', 'Release', 'coriolis_native.node')]) run('strip', ['--strip-unneeded', addon]);
}

function runtime(dir) {
  step(`bundling Node ${process.version} from ${process.execPath}`);
  fs.mkdirSync(path.join(dir, 'node', 'bin'), { recursive: true });
  fs.copyFileSync(fs.realpathSync(process.execPath), path.join(dir, 'node', 'bin', 'node'));
  fs.chmodSync(path.join(dir, 'node', 'bin', 'node'), 0o755);
  // An official tarball's (and nvm's) is beside bin/; Debian's and NodeSource's packages keep it in doc.
  const licence = [path.join(path.dirname(path.dirname(fs.realpathSync(process.execPath))), 'LICENSE'), '/usr/share/doc/nodejs/LICENSE'].find((file) => fs.existsSync(file));
  if (licence === undefined) throw new Error(`Node's LICENSE not found beside ${process.execPath}`);
  fs.copyFileSync(licence, path.join(dir, 'node', 'LICENSE'));
}

function launchers(dir) {
  fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
  for (const name of ['coriolis-snapshot-agent', 'bunyan']) {
    fs.copyFileSync(path.join(__dirname, 'bin', name), path.join(dir, 'bin', name));
    fs.chmodSync(path.join(dir, 'bin', name), 0o755);
  }
}

function contrib(dir) {
  fs.cpSync(path.join(root, 'contrib'), path.join(dir, 'contrib'), { recursive: true });
  fs.copyFileSync(path.join(root, 'README.md'), path.join(dir, 'README.md'));
}

function appFiles(app, info) {
  const { name, version, description, license, dependencies: deps } = pkg;
  fs.writeFileSync(path.join(app, 'package.json'), `${JSON.stringify({ name, version, description, license, private: true, dependencies: deps }, null, 2)}\n`);
  fs.writeFileSync(path.join(app, 'build-info.json'), `${JSON.stringify(info, null, 2)}\n`);
}

/** Every ELF file in the directory must load on glibc 2.28 with nothing but the C and C++ runtimes. */
function verify(dir) {
  step('checking every ELF file against glibc 2.28');
  const problems = [];
  const walk = (at) => {
    for (const entry of fs.readdirSync(at, { withFileTypes: true })) {
      const file = path.join(at, entry.name);
      if (entry.isDirectory()) walk(file);
      else if (entry.isFile() && isElf(file)) problems.push(...checkElf(file).map((problem) => `${path.relative(dir, file)}: ${problem}`));
    }
  };
  walk(dir);
  if (problems.length > 0) throw new Error(`the release would not run on glibc 2.28:\n  ${problems.join('\n  ')}`);
}

function tarball(stage, info) {
  const file = path.join(out, `${NAME}.tar.gz`);
  step('writing the tarball');
  // Same bytes for the same commit: owners, order and times are fixed.
  const tar = spawnSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', `--mtime=@${info.committed_at}`, '-C', stage, '-cf', '-', NAME], { maxBuffer: 1 << 30 });
  if (tar.status !== 0) throw new Error(`tar: ${tar.stderr.toString()}`);
  const gzip = spawnSync('gzip', ['-9n'], { input: tar.stdout, maxBuffer: 1 << 30 });
  if (gzip.status !== 0) throw new Error(`gzip: ${gzip.stderr.toString()}`);
  fs.writeFileSync(`${file}.partial`, gzip.stdout);
  fs.renameSync(`${file}.partial`, file);
  return file;
}

/** What the build needs before it starts, each missing piece named. */
function preflight() {
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new Error(`builds the linux-x64 release only, on linux-x64 (this is ${process.platform}-${process.arch})`);
  const major = Number(process.version.slice(1).split('.')[0]);
  if (major < 20) throw new Error(`the release bundles the Node that runs this build: it must be 20 or newer, this is ${process.version}`);
  try {
    require.resolve('typescript/bin/tsc', { paths: [root] });
    require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] });
  } catch {
    throw new Error('the development dependencies are missing: run npm ci first');
  }
}

function main() {
  const started = Date.now();
  preflight();
  const info = (() => {
    const { commit, committedAt } = source();
    return { name: pkg.name, version: pkg.version, commit, committed_at: committedAt, node: process.version, platform: 'linux-x64' };
  })();
  fs.mkdirSync(out, { recursive: true });
  const work = fs.mkdtempSync(path.join(out, 'work-'));
  try {
    const stage = path.join(work, 'stage');
    const dir = path.join(stage, NAME);
    const app = path.join(dir, 'app');
    fs.mkdirSync(app, { recursive: true });
    compile(app, work);
    dependencies(app);
    buildAddons(app, work, compatObject(work));
    appFiles(app, info);
    runtime(dir);
    launchers(dir);
    contrib(dir);
    verify(dir);
    const files = [tarball(stage, info)];
    files.push(require('./deb').build({ dir, out, info, work }));
    const rpm = require('./rpm').build({ dir, out, info, work });
    if (rpm !== undefined) files.push(rpm);
    for (const file of files) step(`${path.relative(root, file)}: ${(fs.statSync(file).size / 1048576).toFixed(1)} MiB`);
    step(`done in ${((Date.now() - started) / 1000).toFixed(0)} s (commit ${info.commit})`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

try {
  main();
} catch (error) {
  process.stderr.write(`release: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}

// The .deb: the release directory in /opt/coriolis-snapshot-agent, the command in /usr/bin, the
// systemd unit, the udev rule, the sample config and logrotate's snippet; the maintainer scripts
// (release/scripts/) make the user and, on purge, remove what the package and its service made.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { layout, script, PACKAGE } = require('./package');

/** Where the packaged files go, from the release directory's contrib/. */
const FILES = {
  'contrib/coriolis-snapshot-agent.service': `/lib/systemd/system/${PACKAGE}.service`,
  'contrib/99-veeamsnap.rules': `/lib/udev/rules.d/99-${PACKAGE}.rules`,
  'contrib/config.toml.sample': `/etc/${PACKAGE}/config.toml.sample`,
  'contrib/coriolis-snapshot-agent.logrotate': `/etc/logrotate.d/${PACKAGE}`,
};
const CONFFILES = [FILES['contrib/config.toml.sample'], FILES['contrib/coriolis-snapshot-agent.logrotate']];

function duKiB(dir) {
  const result = spawnSync('du', ['-sk', dir], { encoding: 'utf8' });
  return Number(result.stdout.split('\t')[0]);
}

function build({ dir, out, info, work }) {
  const tree = path.join(work, 'deb');
  layout(dir, tree, FILES);
  const control = path.join(tree, 'DEBIAN');
  fs.mkdirSync(control);
  fs.writeFileSync(path.join(control, 'control'), [
    `Package: ${PACKAGE}`,
    `Version: ${info.version}`,
    'Architecture: amd64',
    'Section: admin',
    'Priority: optional',
    `Maintainer: ${PACKAGE} developers <${PACKAGE}@localhost>`,
    // The bundled Node needs the C and C++ runtimes, nothing else.
    'Depends: libc6 (>= 2.28), libstdc++6, passwd',
    `Installed-Size: ${duKiB(tree)}`,
    'Description: block-level snapshots with change tracking for Coriolis',
    ' Takes copy-on-write snapshots of whole disks through the veeamsnap or blksnap kernel module',
    ' and serves them over HTTPS (with client certificates) and NBD. Node.js is bundled.',
    ` Built from commit ${info.commit}.`,
    '',
  ].join('\n'));
  fs.writeFileSync(path.join(control, 'conffiles'), `${CONFFILES.join('\n')}\n`);
  // dpkg's calls: postinst configure [OLD-VERSION], prerm remove|upgrade, postrm remove|purge.
  const scripts = {
    postinst: script('after-install', '[ "$1" = configure ]', '$([ -n "$2" ] && echo upgrade || echo install)'),
    prerm: script('before-remove', '[ "$1" = remove ]'),
    postrm: script('after-purge', '[ "$1" = purge ]', '', 'if [ "$1" = remove ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n'),
  };
  for (const [name, text] of Object.entries(scripts)) fs.writeFileSync(path.join(control, name), text, { mode: 0o755 });
  const name = `${PACKAGE}_${info.version}_amd64.deb`;
  process.stderr.write(`release: building the .deb\n`);
  const result = spawnSync('dpkg-deb', ['--root-owner-group', '-Zxz', '-z6', '--build', tree, path.join(work, name)], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, SOURCE_DATE_EPOCH: String(info.committed_at) } });
  if (result.status !== 0) throw new Error(`dpkg-deb: exit status ${result.status}`);
  // Renamed into place whole: a reader never sees half a package.
  fs.renameSync(path.join(work, name), path.join(out, name));
  return path.join(out, name);
}

module.exports = { build };

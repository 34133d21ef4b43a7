// The .rpm for RHEL 8 and 9, when rpmbuild is installed (Debian's package rpm builds it): the same
// files as the .deb, in RHEL's places (/usr/lib/systemd, /usr/lib/udev), and the same maintainer
// scripts (release/scripts/). rpm has no purge: erasing the package is the .deb's purge.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { layout, script, PACKAGE, PREFIX } = require('./package');

const FILES = {
  'contrib/coriolis-snapshot-agent.service': `/usr/lib/systemd/system/${PACKAGE}.service`,
  'contrib/99-veeamsnap.rules': `/usr/lib/udev/rules.d/99-${PACKAGE}.rules`,
  'contrib/config.toml.sample': `/etc/${PACKAGE}/config.toml.sample`,
  'contrib/coriolis-snapshot-agent.logrotate': `/etc/logrotate.d/${PACKAGE}`,
};
const CONFIG = new Set([FILES['contrib/config.toml.sample'], FILES['contrib/coriolis-snapshot-agent.logrotate']]);

/** A scriptlet body: the shared script without its own shebang line (rpm runs it with /bin/sh). */
function scriptlet(...args) {
  return script(...args).replace(/^#!\/bin\/sh\n/, '');
}

function spec(info, tree) {
  const files = Object.values(FILES).map((file) => (CONFIG.has(file) ? `%config(noreplace) ${file}` : file));
  return `Name: ${PACKAGE}
Version: ${info.version}
Release: 1
Summary: Block-level snapshots with change tracking for Coriolis
License: AGPL-3.0-only
BuildArch: x86_64
# The bundled Node needs the C and C++ runtimes, nothing else; rpm must not scan it for more.
AutoReqProv: no
Requires: glibc >= 2.28, libstdc++, shadow-utils

%global debug_package %{nil}
%global _build_id_links none
%global __os_install_post %{nil}

%description
Takes copy-on-write snapshots of whole disks through the veeamsnap or blksnap kernel module and
serves them over HTTPS (with client certificates) and NBD. Node.js is bundled.
Built from commit ${info.commit}.

%install
cp -a ${tree}/. %{buildroot}/

%post
${scriptlet('after-install', '[ "$1" -ge 1 ]', '$([ "$1" -gt 1 ] && echo upgrade || echo install)')}
%preun
${scriptlet('before-remove', '[ "$1" -eq 0 ]')}
%postun
${scriptlet('after-purge', '[ "$1" -eq 0 ]')}
%files
%defattr(-,root,root,-)
${PREFIX}
/usr/bin/${PACKAGE}
%dir /etc/${PACKAGE}
${files.join('\n')}
`;
}

/** Builds the .rpm into `out`; undefined, with a note, when rpmbuild is not installed. */
function build({ dir, out, info, work }) {
  if (spawnSync('rpmbuild', ['--version']).status !== 0) {
    process.stderr.write('release: no rpmbuild (apt-get install rpm): no .rpm\n');
    return undefined;
  }
  const tree = path.join(work, 'rpm-tree');
  layout(dir, tree, FILES);
  const top = path.join(work, 'rpmbuild');
  const specFile = path.join(work, `${PACKAGE}.spec`);
  fs.writeFileSync(specFile, spec(info, tree));
  process.stderr.write('release: building the .rpm\n');
  const result = spawnSync('rpmbuild', ['-bb', '--quiet', '--define', `_topdir ${top}`, '--define', '_binary_payload w6.xzdio', specFile], {
    encoding: 'utf8', env: { ...process.env, SOURCE_DATE_EPOCH: String(info.committed_at) }, maxBuffer: 1 << 26,
  });
  if (result.status !== 0) throw new Error(`rpmbuild: exit status ${result.status}\n${result.stdout}${result.stderr}`);
  const name = `${PACKAGE}-${info.version}-1.x86_64.rpm`;
  const file = path.join(out, name);
  fs.renameSync(path.join(top, 'RPMS', 'x86_64', name), file);
  return file;
}

module.exports = { build };

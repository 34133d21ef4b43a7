import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  DEFAULT_DATABASE_FILE, DEFAULT_NBD_PORT, DEFAULT_SNAP_STORE_FILE_SIZE, loadConfig, parseConfig,
} from '../../src/config/config';
import { makeTestCerts, type TestCerts } from '../helpers/certs';
import { isAgentError } from '../../src/core/errors';

let dir: string;
let certs: TestCerts;
let destination: string;
let otherCerts: TestCerts;

after(() => fs.rmSync(dir, { recursive: true, force: true }));

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-config-'));
  certs = makeTestCerts(subdir('certs'));
  otherCerts = makeTestCerts(subdir('other'));
  destination = path.join(dir, 'snapstores');
  fs.mkdirSync(destination);
});

function subdir(name: string): string {
  const made = path.join(dir, name);
  fs.mkdirSync(made);
  return made;
}

/** A complete, valid config; each test breaks one thing. */
function validToml(extra = ''): string {
  return `
log_file = "${dir}/log/agent.log"
snapstore_destinations = ["${destination}"]
auto_init_physical_disks = true
snap_store_file_size = 1073741824
${extra}
[api]
bind = "127.0.0.1"
port = 9999

[api.tls]
certificate = "${certs.serverCert}"
key = "${certs.serverKey}"
ca_certificate = "${certs.caCert}"
`;
}

const FILE = '/etc/test/config.toml';

function rejects(text: string, key: string | null, problem: RegExp): void {
  assert.throws(() => parseConfig(text, FILE), (err: unknown) => {
    assert.ok(isAgentError(err, 'invalid'), `expected an invalid-config error, got ${String(err)}`);
    assert.match(err.message, new RegExp(`^config ${FILE}: ${key === null ? '' : key.replace(/[[\].]/g, '\\$&') + ': '}`));
    assert.match(err.message, problem);
    return true;
  });
}

describe('config: a valid file', () => {
  test('loads every key with its type', () => {
    const config = parseConfig(validToml(`
database_file = "${dir}/agent.db"
[[snapstore_mapping]]
device = "vda"
location = "${destination}"
`), FILE);
    assert.equal(config.engine, 'auto', 'the loaded module decides by default');
    assert.equal(config.logFile, `${dir}/log/agent.log`);
    assert.equal(config.databaseFile, `${dir}/agent.db`);
    assert.deepEqual(config.snapstoreDestinations, [destination]);
    assert.equal(config.autoInitPhysicalDisks, true);
    assert.equal(config.snapStoreFileSize, 1073741824);
    assert.deepEqual(config.snapstoreMappings, [{ device: 'vda', location: destination }]);
    assert.equal(config.api.bind, '127.0.0.1');
    assert.equal(config.api.port, 9999);
    assert.equal(config.api.tls.certificate, fs.readFileSync(certs.serverCert, 'utf8'));
    assert.equal(config.api.tls.caCertificateFile, certs.caCert);
  });

  test('fills defaults: database, snapstore size, NBD on the API address with the API certificates', () => {
    const config = parseConfig(validToml().replace('snap_store_file_size = 1073741824', ''), FILE);
    assert.equal(config.databaseFile, DEFAULT_DATABASE_FILE);
    assert.equal(config.snapStoreFileSize, DEFAULT_SNAP_STORE_FILE_SIZE);
    assert.equal(config.nbd.bind, '127.0.0.1');
    assert.equal(config.nbd.port, DEFAULT_NBD_PORT);
    assert.equal(config.nbd.tls, 'require');
    assert.equal(config.nbd.unixSocket, null);
    assert.deepEqual(config.nbd.certificates, config.api.tls);
    assert.deepEqual(config.snapstoreMappings, []);
  });

  test('NBD takes its own certificates when given', () => {
    const config = parseConfig(validToml() + `
[nbd]
bind = "::1"
port = 10810
certificate = "${otherCerts.serverCert}"
key = "${otherCerts.serverKey}"
ca_certificate = "${otherCerts.caCert}"
max_connections = 8
unix_socket = "/run/csa/nbd.sock"
`, FILE);
    assert.equal(config.nbd.bind, '::1');
    assert.equal(config.nbd.port, 10810);
    assert.equal(config.nbd.maxConnections, 8);
    assert.equal(config.nbd.unixSocket, '/run/csa/nbd.sock');
    assert.equal(config.nbd.certificates.caCertificateFile, otherCerts.caCert);
    assert.equal(config.api.tls.caCertificateFile, certs.caCert);
  });

  test('accepts the original agent\'s db_file as the name of database_file', () => {
    const config = parseConfig(validToml(`db_file = "${dir}/old.db"`), FILE);
    assert.equal(config.databaseFile, `${dir}/old.db`);
  });

  test('NBD without TLS is accepted on loopback', () => {
    const config = parseConfig(validToml() + '\n[nbd]\nbind = "127.0.0.1"\ntls = "off"\n', FILE);
    assert.equal(config.nbd.tls, 'off');
    // The same rule as the NBD server's: ::1 in any spelling.
    assert.equal(parseConfig(validToml() + '\n[nbd]\nbind = "0:0:0:0:0:0:0:1"\ntls = "off"\n', FILE).nbd.tls, 'off');
  });

  test('the simulated engine takes its disks from [simulated]', () => {
    const disk = path.join(dir, 'disk0.img');
    fs.writeFileSync(disk, Buffer.alloc(4096));
    const config = parseConfig(`engine = "simulated"\n${validToml()}\n[simulated]\ndisks = ["${disk}"]\nimage_dir = "${dir}/images"\n`, FILE);
    assert.equal(config.engine, 'simulated');
    assert.deepEqual(config.simulated, { disks: [disk], imageDir: `${dir}/images` });
  });

  test('loadConfig reads the file and names it in errors', () => {
    const file = path.join(dir, 'good.toml');
    fs.writeFileSync(file, validToml());
    assert.equal(loadConfig(file).file, file);
    fs.writeFileSync(file, validToml('colour = "blue"'));
    assert.throws(() => loadConfig(file), new RegExp(`^AgentError: config ${file}: colour: unknown key`));
    assert.throws(() => loadConfig(path.join(dir, 'missing.toml')), /missing\.toml: cannot read the file: ENOENT/);
  });
});

describe('config: every mistake is refused, naming the file and the key', () => {
  test('malformed TOML says where', () => {
    rejects('snapstore_destinations = [\n', null, /invalid TOML at line 2/);
  });

  test('unknown keys at any level', () => {
    rejects(validToml('colour = "blue"'), 'colour', /unknown key/);
    rejects(validToml().replace('port = 9999', 'port = 9999\nhost = "x"'), 'api.host', /unknown key/);
    rejects(validToml() + 'crl = "/x"\n', 'api.tls.crl', /unknown key/);
    rejects(validToml() + '[nbd]\nexport = "x"\n', 'nbd.export', /unknown key/);
    rejects(validToml() + '[simulated]\nsize = 1\n', 'simulated.size', /unknown key/);
    rejects(validToml(`[[snapstore_mapping]]\ndevice = "vda"\nlocation = "${destination}"\nsize = 3\n`), 'snapstore_mapping[0].size', /unknown key/);
  });

  test('wrong types', () => {
    rejects(validToml().replace('port = 9999', 'port = "9999"'), 'api.port', /positive integer.*string "9999"/);
    rejects(validToml().replace('port = 9999', 'port = 9999.0'), 'api.port', /positive integer/);
    rejects(validToml().replace('auto_init_physical_disks = true', 'auto_init_physical_disks = "yes"'), 'auto_init_physical_disks', /true or false/);
    rejects(validToml().replace(`snapstore_destinations = ["${destination}"]`, `snapstore_destinations = "${destination}"`), 'snapstore_destinations', /array of paths/);
    rejects(validToml().replace(`snapstore_destinations = ["${destination}"]`, 'snapstore_destinations = [1]'), 'snapstore_destinations[0]', /must be a string/);
    rejects(validToml('api = 3').replace(/\[api\][\s\S]*/, ''), 'api', /must be a table/);
    rejects(validToml('snapstore_mapping = "vda"'), 'snapstore_mapping', /array of tables/);
    rejects(validToml('engine = "kernel"'), 'engine', /one of "auto", "veeamsnap", "blksnap", "simulated"/);
  });

  test('sizes must be positive integers', () => {
    for (const bad of ['0', '-1', '1.5', '"2G"', '9007199254740993']) {
      rejects(validToml().replace('snap_store_file_size = 1073741824', `snap_store_file_size = ${bad}`), 'snap_store_file_size', /positive integer/);
    }
    rejects(validToml() + '[nbd]\nmax_connections = 0\n', 'nbd.max_connections', /positive integer/);
  });

  test('listen addresses and ports', () => {
    rejects(validToml().replace('bind = "127.0.0.1"', 'bind = "localhost"'), 'api.bind', /IPv4 or IPv6 address/);
    rejects(validToml().replace('bind = "127.0.0.1"', ''), 'api.bind', /is required/);
    rejects(validToml().replace('port = 9999', ''), 'api.port', /is required/);
    rejects(validToml().replace('port = 9999', 'port = 0'), 'api.port', /no larger than 65535/);
    rejects(validToml().replace('port = 9999', 'port = 65536'), 'api.port', /no larger than 65535/);
    rejects(validToml() + '[nbd]\nbind = "10.0.0.300"\n', 'nbd.bind', /IPv4 or IPv6/);
  });

  test('relative paths', () => {
    rejects(validToml().replace(`log_file = "${dir}/log/agent.log"`, 'log_file = "agent.log"'), 'log_file', /absolute path/);
    rejects(validToml('database_file = "state/agent.db"'), 'database_file', /absolute path/);
    rejects(validToml().replace(`["${destination}"]`, '["snapstores"]'), 'snapstore_destinations[0]', /absolute path/);
    rejects(validToml().replace(`certificate = "${certs.serverCert}"`, 'certificate = "server-cert.pem"'), 'api.tls.certificate', /absolute path/);
  });

  test('snapstore destinations must exist as directories', () => {
    rejects(validToml().replace(`snapstore_destinations = ["${destination}"]`, 'snapstore_destinations = []'), 'snapstore_destinations', /at least one/);
    rejects(validToml().replace(`["${destination}"]`, `["${dir}/nowhere"]`), 'snapstore_destinations[0]', /ENOENT/);
    rejects(validToml().replace(`["${destination}"]`, `["${certs.caCert}"]`), 'snapstore_destinations[0]', /not a directory/);
  });

  test('mappings point at a configured destination, once per disk', () => {
    rejects(validToml(`[[snapstore_mapping]]\ndevice = "vda"\nlocation = "/mnt/elsewhere"\n`), 'snapstore_mapping[0].location', /not one of snapstore_destinations/);
    rejects(validToml(`[[snapstore_mapping]]\nlocation = "${destination}"\n`), 'snapstore_mapping[0].device', /is required/);
    rejects(validToml(`[[snapstore_mapping]]\ndevice = "/dev/vda"\nlocation = "${destination}"\n`), 'snapstore_mapping[0].device', /kernel name/);
    const twice = `[[snapstore_mapping]]\ndevice = "vda"\nlocation = "${destination}"\n`;
    rejects(validToml(twice + twice), 'snapstore_mapping[1].device', /mapped more than once/);
  });

  test('certificates: missing, unreadable, not PEM, key of another certificate, empty CA', () => {
    const garbage = path.join(dir, 'garbage.pem');
    fs.writeFileSync(garbage, 'not a certificate\n');
    rejects(validToml().replace(certs.serverCert, `${dir}/missing.pem`), 'api.tls.certificate', /cannot read .*missing\.pem.*ENOENT/);
    rejects(validToml().replace(certs.serverCert, dir), 'api.tls.certificate', /cannot read.*EISDIR/);
    rejects(validToml().replace(certs.serverCert, garbage), 'api.tls.certificate', /not a valid PEM certificate/);
    rejects(validToml().replace(certs.serverKey, garbage), 'api.tls.key', /not a valid PEM private key/);
    rejects(validToml().replace(certs.serverKey, otherCerts.serverKey), 'api.tls.key', /does not belong to the certificate/);
    rejects(validToml().replace(certs.caCert, garbage), 'api.tls.ca_certificate', /not a valid PEM certificate bundle/);
    rejects(validToml().replace(/\[api\.tls\][\s\S]*/, ''), 'api.tls.certificate', /is required/);
    rejects(validToml() + `[nbd]\nkey = "${otherCerts.serverKey}"\n`, 'nbd.key', /does not belong/);
  });

  test('NBD without TLS is refused off loopback', () => {
    rejects(validToml().replace('bind = "127.0.0.1"', 'bind = "0.0.0.0"') + '[nbd]\ntls = "off"\n', 'nbd.tls', /loopback/);
    rejects(validToml() + '[nbd]\ntls = "maybe"\n', 'nbd.tls', /"require" or "off"/);
  });

  test('db_file and database_file together are ambiguous', () => {
    rejects(validToml(`db_file = "${dir}/a.db"\ndatabase_file = "${dir}/b.db"`), 'db_file', /give only one/);
  });

  test('the simulated engine needs usable disks, and only it may have them', () => {
    rejects(`engine = "simulated"\n${validToml()}`, 'simulated.disks', /must list/);
    rejects(`engine = "simulated"\n${validToml()}\n[simulated]\ndisks = ["${dir}/no-disk.img"]\n`, 'simulated.disks[0]', /ENOENT/);
    rejects(`${validToml()}\n[simulated]\ndisks = ["${certs.caCert}"]\n`, 'simulated.disks', /only used when engine = "simulated"/);
  });
});

describe('config: the shipped sample', () => {
  test('contrib/config.toml.sample is valid once its paths exist, and every commented key is known', () => {
    const sample = fs.readFileSync(path.resolve(__dirname, '../../../contrib/config.toml.sample'), 'utf8');
    const local = (text: string): string => text
      .replaceAll('/etc/coriolis-snapshot-agent/certs/server-cert.pem', certs.serverCert)
      .replaceAll('/etc/coriolis-snapshot-agent/certs/server-key.pem', certs.serverKey)
      .replaceAll('/etc/coriolis-snapshot-agent/certs/ca-cert.pem', certs.caCert)
      .replaceAll('/var/lib/coriolis-snapshots', destination);
    const config = parseConfig(local(sample), FILE);
    assert.deepEqual(config.snapstoreMappings, [{ device: 'sda', location: destination }]);
    // Uncommenting the optional keys (with values that fit together) must still be valid.
    const disk = path.join(dir, 'sample-disk.img');
    fs.writeFileSync(disk, Buffer.alloc(4096));
    const everything = local(sample)
      .replace(/^#(\w+ = )/gm, '$1')
      .replace('engine = "auto"', 'engine = "simulated"')
      .replace('allowed_clients = ["CN=coriolis", "sha256:AB:CD:..."]', 'allowed_clients = ["CN=coriolis"]')
      .replace('bind = "<the [api] bind address>"', 'bind = "127.0.0.1"')
      // NBD's own allow-list goes with a CA of its own.
      .replace(/(\[nbd\][^[]*?ca_certificate = )"[^"]*"/, `$1"${otherCerts.caCert}"`)
      .replace('disks = ["/srv/demo/disk0.img"]', `disks = ["${disk}"]`);
    assert.equal(parseConfig(everything, FILE).engine, 'simulated');
  });
});

describe('api.tls.allowed_clients', () => {
  const withClients = (list: string): string => validToml().replace('[api.tls]\n', `[api.tls]\nallowed_clients = ${list}\n`);

  test('absent means every client the CA signed; subjects and fingerprints are kept as given', () => {
    assert.deepEqual(parseConfig(validToml(), FILE).api.allowedClients, []);
    const fingerprint = `sha256:${'AB:'.repeat(31)}CD`;
    const clients = ['CN=backup, O=Coriolis', fingerprint, 'ab'.repeat(32)];
    assert.deepEqual(parseConfig(withClients(JSON.stringify(clients)), FILE).api.allowedClients, clients);
  });

  test('entries that are neither a subject nor a fingerprint are refused, naming the entry', () => {
    rejects(withClients('"CN=client"'), 'api.tls.allowed_clients', /must be an array of strings/);
    rejects(withClients('["CN=client", 5]'), 'api.tls.allowed_clients[1]', /must be a string/);
    rejects(withClients('["client"]'), 'api.tls.allowed_clients[0]', /neither a certificate subject/);
    rejects(withClients('["sha256:ABCD"]'), 'api.tls.allowed_clients[0]', /not a SHA-256 fingerprint/);
    rejects(withClients('[""]'), 'api.tls.allowed_clients[0]', /neither a certificate subject/);
  });
});

describe('log_level and shutdown_grace_seconds', () => {
  test('default to info and 20 seconds, and take what is given', () => {
    const defaults = parseConfig(validToml(), FILE);
    assert.deepEqual([defaults.logLevel, defaults.shutdownGraceSeconds], ['info', 20]);
    const given = parseConfig(validToml('log_level = "debug"\nshutdown_grace_seconds = 90'), FILE);
    assert.deepEqual([given.logLevel, given.shutdownGraceSeconds], ['debug', 90]);
  });

  test('bad values are refused, naming the key', () => {
    rejects(validToml('log_level = "verbose"'), 'log_level', /must be one of trace, debug, info, warn, error, fatal, got "verbose"/);
    rejects(validToml('log_level = 3'), 'log_level', /must be a string/);
    rejects(validToml('shutdown_grace_seconds = 0'), 'shutdown_grace_seconds', /positive integer no larger than 3600/);
    rejects(validToml('shutdown_grace_seconds = 3601'), 'shutdown_grace_seconds', /no larger than 3600/);
    rejects(validToml('shutdown_grace_seconds = 1.5'), 'shutdown_grace_seconds', /positive integer/);
  });
});

describe('[limits]', () => {
  const withLimits = (lines: string): string => validToml(`[limits]\n${lines}\n`);

  test('absent means no read-rate limit, and reader threads at the priority the process has', () => {
    assert.deepEqual(parseConfig(validToml(), FILE).limits, { readBytesPerSecond: null, connectionReadBytesPerSecond: null, ioPriority: null });
  });

  test('rates in bytes per second and a priority by name', () => {
    const config = parseConfig(withLimits('read_bytes_per_second = 52_428_800\nconnection_read_bytes_per_second = 10485760\nio_priority = "idle"'), FILE);
    assert.deepEqual(config.limits, { readBytesPerSecond: 52428800, connectionReadBytesPerSecond: 10485760, ioPriority: 'idle' });
    assert.equal(parseConfig(withLimits('io_priority = "best-effort-low"'), FILE).limits.ioPriority, 'best-effort-low');
    assert.equal(parseConfig(withLimits('io_priority = "normal"'), FILE).limits.ioPriority, 'normal');
  });

  test('bad values are refused, naming the key', () => {
    rejects(withLimits('read_bytes_per_second = 0'), 'limits.read_bytes_per_second', /positive integer/);
    rejects(withLimits('read_bytes_per_second = 1.5e7'), 'limits.read_bytes_per_second', /positive integer/);
    rejects(withLimits('read_bytes_per_second = "50M"'), 'limits.read_bytes_per_second', /positive integer/);
    rejects(withLimits('connection_read_bytes_per_second = 1000'), 'limits.connection_read_bytes_per_second', /at least 1048576 \(1 MiB\/s\), got 1000/);
    rejects(withLimits('io_priority = "realtime"'), 'limits.io_priority', /must be one of "normal", "best-effort-low", "idle"/);
    rejects(withLimits('io_priority = 7'), 'limits.io_priority', /must be a string/);
    rejects(withLimits('read_byte_per_second = 52428800'), 'limits.read_byte_per_second', /unknown key/);
    rejects(validToml('limits = 5'), 'limits', /must be a table/);
  });
});

describe('the allow-list NBD applies', () => {
  const withClients = (list: string): string => validToml().replace('[api.tls]\n', `[api.tls]\nallowed_clients = ${list}\n`);
  test('NBD on the API\'s CA applies [api.tls] allowed_clients', () => {
    assert.deepEqual(parseConfig(withClients('["CN=backup"]'), FILE).nbd.allowedClients, ['CN=backup']);
    assert.deepEqual(parseConfig(validToml(), FILE).nbd.allowedClients, []);
    // Naming the same CA file, or a bundle that contains it, is still the API's CA.
    const bundle = path.join(dir, 'bundle.pem');
    fs.writeFileSync(bundle, fs.readFileSync(otherCerts.caCert, 'utf8') + fs.readFileSync(certs.caCert, 'utf8'));
    const config = parseConfig(withClients('["CN=backup"]') + `\n[nbd]\nca_certificate = "${bundle}"\n`, FILE);
    assert.deepEqual(config.nbd.allowedClients, ['CN=backup']);
  });

  test('an [nbd] list is refused while NBD trusts the API\'s CA: one CA, one list', () => {
    rejects(withClients('["CN=backup"]') + '\n[nbd]\nallowed_clients = ["CN=other"]\n', 'nbd.allowed_clients', /\[api\.tls\] allowed_clients applies to it/);
  });

  test('NBD with a CA of its own takes its own list, checked like the API\'s', () => {
    const ownCa = `\n[nbd]\ncertificate = "${otherCerts.serverCert}"\nkey = "${otherCerts.serverKey}"\nca_certificate = "${otherCerts.caCert}"\n`;
    assert.deepEqual(parseConfig(withClients('["CN=backup"]') + ownCa + 'allowed_clients = ["CN=nbd reader"]\n', FILE).nbd.allowedClients, ['CN=nbd reader']);
    assert.deepEqual(parseConfig(withClients('["CN=backup"]') + ownCa, FILE).nbd.allowedClients, []);
    rejects(validToml() + ownCa + 'allowed_clients = ["reader"]\n', 'nbd.allowed_clients[0]', /neither a certificate subject/);
  });

  test('TLS off is refused when a list applies: it would admit every local process', () => {
    rejects(withClients('["CN=backup"]') + '\n[nbd]\nbind = "127.0.0.1"\ntls = "off"\n', 'nbd.tls', /past allowed_clients/);
  });

  test('allowed_clients in [api] or at the top is refused, pointing to [api.tls]', () => {
    rejects(validToml().replace('port = 9999\n', 'port = 9999\nallowed_clients = ["CN=backup"]\n'), 'api.allowed_clients', /allowed_clients under \[api\.tls\]/);
    rejects(validToml('allowed_clients = ["CN=backup"]'), 'allowed_clients', /allowed_clients under \[api\.tls\]/);
  });
});

// Loads the agent's TOML configuration into a validated, typed Config.
//
// The file format is the original agent's (log_file, snapstore_destinations, ...) plus our own
// keys. Unlike the original, every problem is fatal and reported once, naming the file and the
// key: an unknown key is a typo until proven otherwise, and a bad certificate found at the first
// TLS handshake is much harder to diagnose than one found at start.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import toml from 'toml';
import { invalid, type AgentError } from '../core/errors';
import { LOG_LEVELS, type LogLevel } from '../core/log';
import { parseClientMatcher } from '../doors/allow-list';
import { isLoopbackAddress, type TlsMaterial } from '../doors/tls';
import { IO_PRIORITIES, type IoPriority } from '../native/io-priority';

export const DEFAULT_CONFIG_FILE = '/etc/coriolis-snapshot-agent/config.toml';
export const DEFAULT_DATABASE_FILE = '/var/lib/coriolis-snapshot-agent/agent.db';
export const DEFAULT_SNAP_STORE_FILE_SIZE = 2 * 1024 ** 3;
export const DEFAULT_NBD_PORT = 10809;
export const DEFAULT_NBD_MAX_CONNECTIONS = 64;
/** How long SIGTERM lets downloads and NBD connections finish; the unit's TimeoutStopSec must exceed it. */
export const DEFAULT_SHUTDOWN_GRACE_SECONDS = 20;
export const MAX_SHUTDOWN_GRACE_SECONDS = 3600;

/** "auto": the snapshot module that is loaded (src/engine/select.ts). */
export type EngineKind = 'auto' | 'veeamsnap' | 'blksnap' | 'simulated';
const ENGINES: readonly EngineKind[] = ['auto', 'veeamsnap', 'blksnap', 'simulated'];

/** PEM material and the files it came from, loaded and checked at start so a bad file never surfaces as a handshake error. */
export interface TlsFiles extends TlsMaterial {
  certificateFile: string;
  keyFile: string;
  caCertificateFile: string;
}

export interface SnapstoreMapping {
  /** Tracking id of the disk: its kernel name, e.g. "vda". */
  device: string;
  /** One of snapstoreDestinations. */
  location: string;
}

export interface Config {
  file: string;
  engine: EngineKind;
  logFile: string | null;
  logLevel: LogLevel;
  /** SIGTERM: downloads and NBD connections in progress get this long before they are cut. */
  shutdownGraceSeconds: number;
  databaseFile: string;
  snapstoreDestinations: string[];
  autoInitPhysicalDisks: boolean;
  snapstoreMappings: SnapstoreMapping[];
  /** Both the growth step of a snapstore and its free-space threshold, in bytes. */
  snapStoreFileSize: number;
  /** allowedClients: client certificate subjects or SHA-256 fingerprints; empty admits any the CA signed. */
  api: { bind: string; port: number; tls: TlsFiles; allowedClients: string[] };
  nbd: {
    bind: string;
    port: number;
    tls: 'require' | 'off';
    certificates: TlsFiles;
    unixSocket: string | null;
    maxConnections: number;
    /** The allow-list NBD applies: [api.tls]'s when NBD shares a CA with the API, else [nbd]'s own. */
    allowedClients: string[];
  };
  simulated: { disks: string[]; imageDir: string | null };
  /**
   * Protecting the machine's own workload: read rates in bytes per second (null: unlimited), and
   * the reader threads' I/O priority (null: the process's own, e.g. systemd's IOSchedulingClass).
   */
  limits: { readBytesPerSecond: number | null; connectionReadBytesPerSecond: number | null; ioPriority: IoPriority | null };
}

/** A mistake in the configuration: an `invalid` AgentError naming the file and the key (main.ts exits 2). */
export function configError(file: string, key: string | null, problem: string): AgentError {
  return invalid(key === null ? `config ${file}: ${problem}` : `config ${file}: ${key}: ${problem}`);
}

type TomlTable = Record<string, unknown>;

function describe(value: unknown): string {
  if (typeof value === 'bigint') return `integer ${value}`;
  if (typeof value === 'string') return `string ${JSON.stringify(value)}`;
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'a date';
  if (value !== null && typeof value === 'object') return 'a table';
  return `${typeof value} ${String(value)}`;
}

/**
 * One TOML table being read, with the keys it may hold. Unknown keys are refused before any
 * value is looked at, so a misspelt key is reported as such and not as the key it hides.
 */
class TableReader {
  constructor(readonly file: string, private readonly prefix: string, private readonly table: TomlTable,
    knownKeys: readonly string[]) {
    const unknown = Object.keys(table).find((key) => !knownKeys.includes(key));
    if (unknown !== undefined) throw this.error(unknown, MISPLACED_KEYS[this.prefix + unknown] ?? 'unknown key');
  }

  error(key: string, problem: string): AgentError {
    return configError(this.file, this.prefix + key, problem);
  }

  has(key: string): boolean {
    return this.table[key] !== undefined;
  }

  string(key: string): string | undefined {
    const value = this.table[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw this.error(key, `must be a string, got ${describe(value)}`);
    return value;
  }

  requiredString(key: string): string {
    const value = this.string(key);
    if (value === undefined || value === '') throw this.error(key, 'is required');
    return value;
  }

  boolean(key: string, fallback: boolean): boolean {
    const value = this.table[key];
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') throw this.error(key, `must be true or false, got ${describe(value)}`);
    return value;
  }

  /** A positive integer that fits a JS number exactly; TOML floats are refused. */
  positiveInteger(key: string, fallback: number | undefined, max = Number.MAX_SAFE_INTEGER): number {
    const value = this.table[key];
    if (value === undefined) {
      if (fallback === undefined) throw this.error(key, 'is required');
      return fallback;
    }
    if (typeof value !== 'bigint' || value <= 0n || value > BigInt(max)) {
      throw this.error(key, `must be a positive integer no larger than ${max}, got ${describe(value)}`);
    }
    return Number(value);
  }

  absolutePath(key: string): string | undefined {
    const value = this.string(key);
    if (value === undefined) return undefined;
    return this.checkAbsolute(key, value);
  }

  checkAbsolute(key: string, value: string): string {
    if (value === '' || !path.isAbsolute(value)) throw this.error(key, `must be an absolute path, got ${JSON.stringify(value)}`);
    return path.normalize(value);
  }

  stringArray(key: string): string[] | undefined {
    const value = this.table[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value)) throw this.error(key, `must be an array of strings, got ${describe(value)}`);
    return value.map((item, index) => {
      if (typeof item !== 'string') throw this.error(`${key}[${index}]`, `must be a string, got ${describe(item)}`);
      return item;
    });
  }

  pathArray(key: string): string[] | undefined {
    const value = this.table[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value)) throw this.error(key, `must be an array of paths, got ${describe(value)}`);
    return value.map((item, index) => {
      if (typeof item !== 'string') throw this.error(`${key}[${index}]`, `must be a string, got ${describe(item)}`);
      return this.checkAbsolute(`${key}[${index}]`, item);
    });
  }

  section(key: string, knownKeys: readonly string[]): TableReader {
    const value = this.table[key] ?? {};
    if (!isTable(value)) throw this.error(key, `must be a table, got ${describe(value)}`);
    return new TableReader(this.file, `${this.prefix}${key}.`, value, knownKeys);
  }

  sectionArray(key: string, knownKeys: readonly string[]): TableReader[] {
    const value = this.table[key];
    if (value === undefined) return [];
    if (!Array.isArray(value) || !value.every(isTable)) {
      throw this.error(key, `must be an array of tables ([[${this.prefix}${key}]]), got ${describe(value)}`);
    }
    return value.map((item, index) => new TableReader(this.file, `${this.prefix}${key}[${index}].`, item, knownKeys));
  }
}

const TLS_KEYS = ['certificate', 'key', 'ca_certificate'] as const;
/** Keys that are easy to put in the wrong table, where ignoring them would open a door. */
const MISPLACED_KEYS: Record<string, string> = {
  allowed_clients: 'is not read here: the API\'s allow-list is allowed_clients under [api.tls]',
  'api.allowed_clients': 'is not read here: the API\'s allow-list is allowed_clients under [api.tls]',
};
const TOP_KEYS = ['engine', 'log_file', 'log_level', 'shutdown_grace_seconds', 'db_file', 'database_file', 'snapstore_destinations', 'auto_init_physical_disks',
  'snap_store_file_size', 'snapstore_mapping', 'api', 'nbd', 'simulated', 'limits'] as const;

function isTable(value: unknown): value is TomlTable {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Date);
}

function readPem(reader: TableReader, key: string, file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw reader.error(key, `cannot read ${file}: ${(err as Error).message}`);
  }
}

function pemCertificates(pem: string): crypto.X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((block) => new crypto.X509Certificate(block));
}

/** Reads certificate, key and ca_certificate, each defaulting to `fallback`'s, and checks they belong together. */
function readTls(reader: TableReader, fallback: TlsFiles | null): TlsFiles {
  const files = {
    certificateFile: reader.absolutePath('certificate') ?? fallback?.certificateFile,
    keyFile: reader.absolutePath('key') ?? fallback?.keyFile,
    caCertificateFile: reader.absolutePath('ca_certificate') ?? fallback?.caCertificateFile,
  };
  const { certificateFile, keyFile, caCertificateFile } = files;
  if (certificateFile === undefined) throw reader.error('certificate', 'is required');
  if (keyFile === undefined) throw reader.error('key', 'is required');
  if (caCertificateFile === undefined) throw reader.error('ca_certificate', 'is required');

  const certificate = readPem(reader, 'certificate', certificateFile);
  const key = readPem(reader, 'key', keyFile);
  const caCertificate = readPem(reader, 'ca_certificate', caCertificateFile);

  let leaf: crypto.X509Certificate;
  try {
    const chain = pemCertificates(certificate);
    if (chain.length === 0) throw new Error('no PEM certificate found');
    leaf = chain[0]!;
  } catch (err) {
    throw reader.error('certificate', `${certificateFile} is not a valid PEM certificate: ${(err as Error).message}`);
  }
  let privateKey: crypto.KeyObject;
  try {
    privateKey = crypto.createPrivateKey(key);
  } catch (err) {
    throw reader.error('key', `${keyFile} is not a valid PEM private key: ${(err as Error).message}`);
  }
  if (!leaf.checkPrivateKey(privateKey)) {
    throw reader.error('key', `${keyFile} does not belong to the certificate ${certificateFile}`);
  }
  try {
    if (pemCertificates(caCertificate).length === 0) throw new Error('no PEM certificate found');
  } catch (err) {
    throw reader.error('ca_certificate', `${caCertificateFile} is not a valid PEM certificate bundle: ${(err as Error).message}`);
  }
  return { certificateFile, keyFile, caCertificateFile, certificate, key, caCertificate };
}

function readAllowedClients(reader: TableReader): string[] {
  const entries = reader.stringArray('allowed_clients') ?? [];
  for (const [index, entry] of entries.entries()) {
    try {
      parseClientMatcher(entry);
    } catch (err) {
      throw reader.error(`allowed_clients[${index}]`, (err as Error).message);
    }
  }
  return entries;
}

/** Whether the two PEM bundles trust a CA in common: a client one accepts may then reach the other. */
function shareCertificate(bundle: string, other: string): boolean {
  const fingerprints = new Set(pemCertificates(bundle).map((certificate) => certificate.fingerprint256));
  return pemCertificates(other).some((certificate) => fingerprints.has(certificate.fingerprint256));
}

function readBind(reader: TableReader, key: string, fallback?: string): string {
  const value = reader.string(key) ?? fallback;
  if (value === undefined || value === '') throw reader.error(key, 'is required (an IP address to listen on)');
  if (net.isIP(value) === 0) throw reader.error(key, `must be an IPv4 or IPv6 address, got ${JSON.stringify(value)}`);
  return value;
}

/** Parses and validates TOML text; `file` is used in messages and to resolve nothing else. */
export function parseConfig(text: string, file: string): Config {
  let raw: TomlTable;
  try {
    raw = toml.parse(text, { bigint: true }) as TomlTable;
  } catch (err) {
    const where = (err as { location?: { start?: { line: number; column: number } } }).location?.start;
    const at = where ? ` at line ${where.line}, column ${where.column}` : '';
    throw configError(file, null, `invalid TOML${at}: ${(err as Error).message}`);
  }
  const top = new TableReader(file, '', raw, TOP_KEYS);

  const engine = (top.string('engine') ?? 'auto') as EngineKind;
  if (!ENGINES.includes(engine)) {
    throw top.error('engine', `must be one of ${ENGINES.map((e) => `"${e}"`).join(', ')}, got ${JSON.stringify(engine)}`);
  }
  const logFile = top.absolutePath('log_file') ?? null;
  const logLevel = top.string('log_level') ?? 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw top.error('log_level', `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  }
  const shutdownGraceSeconds = top.positiveInteger('shutdown_grace_seconds', DEFAULT_SHUTDOWN_GRACE_SECONDS, MAX_SHUTDOWN_GRACE_SECONDS);

  // db_file is the original agent's name for the same setting.
  if (top.has('db_file') && top.has('database_file')) {
    throw top.error('db_file', 'is the old name of database_file: give only one of them');
  }
  const databaseFile = top.absolutePath('database_file') ?? top.absolutePath('db_file') ?? DEFAULT_DATABASE_FILE;

  const snapstoreDestinations = top.pathArray('snapstore_destinations') ?? [];
  if (snapstoreDestinations.length === 0) {
    throw top.error('snapstore_destinations', 'must list at least one directory for snapstore files');
  }
  for (const [index, destination] of snapstoreDestinations.entries()) {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(destination);
    } catch (err) {
      throw top.error(`snapstore_destinations[${index}]`, `cannot use ${destination}: ${(err as Error).message}`);
    }
    if (!stat.isDirectory()) throw top.error(`snapstore_destinations[${index}]`, `${destination} is not a directory`);
  }
  const autoInitPhysicalDisks = top.boolean('auto_init_physical_disks', false);
  const snapStoreFileSize = top.positiveInteger('snap_store_file_size', DEFAULT_SNAP_STORE_FILE_SIZE);

  const snapstoreMappings: SnapstoreMapping[] = [];
  for (const mapping of top.sectionArray('snapstore_mapping', ['device', 'location'])) {
    const device = mapping.requiredString('device');
    if (device.includes('/')) throw mapping.error('device', `must be a disk's kernel name such as "vda", got ${JSON.stringify(device)}`);
    const location = mapping.checkAbsolute('location', mapping.requiredString('location'));
    if (!snapstoreDestinations.includes(location)) {
      throw mapping.error('location', `${location} is not one of snapstore_destinations`);
    }
    if (snapstoreMappings.some((m) => m.device === device)) {
      throw mapping.error('device', `${device} is mapped more than once`);
    }
    snapstoreMappings.push({ device, location });
  }

  const apiSection = top.section('api', ['bind', 'port', 'tls']);
  const apiBind = readBind(apiSection, 'bind');
  const apiPort = apiSection.positiveInteger('port', undefined, 65535);
  const apiTlsSection = apiSection.section('tls', [...TLS_KEYS, 'allowed_clients']);
  const apiTls = readTls(apiTlsSection, null);
  const allowedClients = readAllowedClients(apiTlsSection);

  const nbdSection = top.section('nbd', ['bind', 'port', 'tls', 'unix_socket', 'max_connections', 'allowed_clients', ...TLS_KEYS]);
  const nbdBind = readBind(nbdSection, 'bind', apiBind);
  const nbdPort = nbdSection.positiveInteger('port', DEFAULT_NBD_PORT, 65535);
  const nbdTls = nbdSection.string('tls') ?? 'require';
  if (nbdTls !== 'require' && nbdTls !== 'off') {
    throw nbdSection.error('tls', `must be "require" or "off", got ${JSON.stringify(nbdTls)}`);
  }
  if (nbdTls === 'off' && !isLoopbackAddress(nbdBind)) {
    throw nbdSection.error('tls', `"off" is allowed only when nbd.bind is a loopback address, not ${nbdBind}: disk data would cross the network unauthenticated`);
  }
  const unixSocket = nbdSection.absolutePath('unix_socket') ?? null;
  const maxConnections = nbdSection.positiveInteger('max_connections', DEFAULT_NBD_MAX_CONNECTIONS, 65535);
  const nbdCertificates = readTls(nbdSection, apiTls);
  // One list per CA: a certificate the API's CA signed meets the API's list on every door.
  const nbdSharesApiCa = shareCertificate(apiTls.caCertificate, nbdCertificates.caCertificate);
  if (nbdSharesApiCa && nbdSection.has('allowed_clients')) {
    throw nbdSection.error('allowed_clients', 'NBD trusts the API\'s CA, so [api.tls] allowed_clients applies to it: list the clients there (an [nbd] list is only for an NBD ca_certificate of its own)');
  }
  const nbdAllowedClients = nbdSharesApiCa ? allowedClients : readAllowedClients(nbdSection);
  if (nbdTls === 'off' && nbdAllowedClients.length > 0) {
    throw nbdSection.error('tls', '"off" would serve every local process without a certificate, past allowed_clients: keep TLS on, or remove the allow-list');
  }

  const simulatedSection = top.section('simulated', ['disks', 'image_dir']);
  const simulatedDisks = simulatedSection.pathArray('disks') ?? [];
  const imageDir = simulatedSection.absolutePath('image_dir') ?? null;
  if (engine === 'simulated' && simulatedDisks.length === 0) {
    throw configError(file, 'simulated.disks', 'must list the files or loop devices that act as disks when engine = "simulated"');
  }
  if (engine !== 'simulated' && simulatedDisks.length > 0) {
    throw configError(file, 'simulated.disks', 'is only used when engine = "simulated"');
  }
  for (const [index, disk] of simulatedDisks.entries()) {
    try {
      fs.accessSync(disk, fs.constants.R_OK | fs.constants.W_OK);
    } catch (err) {
      throw configError(file, `simulated.disks[${index}]`, `cannot use ${disk}: ${(err as Error).message}`);
    }
  }

  const limits = readLimits(top.section('limits', ['read_bytes_per_second', 'connection_read_bytes_per_second', 'io_priority']));

  return {
    file,
    engine,
    logFile,
    logLevel: logLevel as LogLevel,
    shutdownGraceSeconds,
    databaseFile,
    snapstoreDestinations,
    autoInitPhysicalDisks,
    snapstoreMappings,
    snapStoreFileSize,
    api: { bind: apiBind, port: apiPort, tls: apiTls, allowedClients },
    nbd: { bind: nbdBind, port: nbdPort, tls: nbdTls, certificates: nbdCertificates, unixSocket, maxConnections,
      allowedClients: nbdAllowedClients },
    simulated: { disks: simulatedDisks, imageDir },
    limits,
  };
}

/** Slower, one large read (an NBD client may ask for 32 MiB at once) would outlast clients' timeouts. */
const MIN_READ_BYTES_PER_SECOND = 1024 * 1024;

function readLimits(section: TableReader): Config['limits'] {
  const rate = (key: string): number | null => {
    if (!section.has(key)) return null;
    const value = section.positiveInteger(key, undefined);
    if (value < MIN_READ_BYTES_PER_SECOND) {
      throw section.error(key, `must be at least ${MIN_READ_BYTES_PER_SECOND} (1 MiB/s), got ${value}; leave it out for no limit`);
    }
    return value;
  };
  const ioPriority = section.string('io_priority') ?? null;
  if (ioPriority !== null && !(IO_PRIORITIES as readonly string[]).includes(ioPriority)) {
    throw section.error('io_priority', `must be one of ${IO_PRIORITIES.map((name) => JSON.stringify(name)).join(', ')}, got ${JSON.stringify(ioPriority)}`);
  }
  return {
    readBytesPerSecond: rate('read_bytes_per_second'),
    connectionReadBytesPerSecond: rate('connection_read_bytes_per_second'),
    ioPriority: ioPriority as IoPriority | null,
  };
}

export function loadConfig(file: string): Config {
  const absolute = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(absolute, 'utf8');
  } catch (err) {
    throw configError(absolute, null, `cannot read the file: ${(err as Error).message}`);
  }
  return parseConfig(text, absolute);
}

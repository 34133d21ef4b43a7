// gen-certs: a CA, a server certificate and a client certificate for the REST API and NBD, in
// the file names libnbd and curl expect (ca-cert.pem, server-cert.pem, server-key.pem,
// client-cert.pem, client-key.pem). ECDSA P-256 with SHA-256, keys in PKCS#8 PEM with mode 0600:
// what OpenSSL, curl and GnuTLS (nbdinfo, nbdcopy, qemu-img) all accept. The CA key is not
// kept: nothing on the agent's host should be able to mint more clients; to add or replace a
// certificate, generate a new set with --force.
import { webcrypto } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as x509 from '@peculiar/x509';
import { lookupGroupId } from './accounts';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const KEY_ALGORITHM: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING_ALGORITHM: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const DAY_MS = 24 * 60 * 60 * 1000;
/** The longest validity browsers and many TLS stacks still accept for a leaf. */
export const DEFAULT_VALIDITY_DAYS = 825;
export const DEFAULT_HOSTS = ['localhost', '127.0.0.1', '::1'];
// Tolerates clocks a little behind the one that issued the certificates.
const BACKDATE_MS = 5 * 60 * 1000;

export const CERTIFICATE_FILES = {
  caCert: 'ca-cert.pem',
  serverCert: 'server-cert.pem',
  serverKey: 'server-key.pem',
  clientCert: 'client-cert.pem',
  clientKey: 'client-key.pem',
} as const;

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

export interface IssuedCertificate {
  certificate: x509.X509Certificate;
  keys: CryptoKeyPair;
  certificatePem: string;
  keyPem: string;
}

function validityFor(days: number): Validity {
  const now = Date.now();
  return { notBefore: new Date(now - BACKDATE_MS), notAfter: new Date(now + days * DAY_MS) };
}

async function keyPem(key: CryptoKey): Promise<string> {
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') + '\n';
}

async function finish(certificate: x509.X509Certificate, keys: CryptoKeyPair): Promise<IssuedCertificate> {
  return { certificate, keys, certificatePem: certificate.toString('pem') + '\n', keyPem: await keyPem(keys.privateKey) };
}

function generateKeys(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']);
}

export async function createCertificateAuthority(commonName: string, validity: Validity): Promise<IssuedCertificate> {
  const keys = await generateKeys();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    name: [{ CN: [commonName] }],
    ...validity,
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return finish(certificate, keys);
}

export interface LeafRequest {
  commonName: string;
  usage: 'server' | 'client';
  /** Subject alternative names: IP SANs for IP literals, DNS otherwise. */
  hosts?: readonly string[];
  validity: Validity;
}

export async function issueCertificate(ca: IssuedCertificate, request: LeafRequest): Promise<IssuedCertificate> {
  const keys = await generateKeys();
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([request.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
  ];
  if (request.hosts !== undefined && request.hosts.length > 0) {
    extensions.push(new x509.SubjectAlternativeNameExtension(
      request.hosts.map((host) => ({ type: net.isIP(host) === 0 ? 'dns' : 'ip', value: host })),
    ));
  }
  const certificate = await x509.X509CertificateGenerator.create({
    subject: [{ CN: [request.commonName] }],
    issuer: ca.certificate.subject,
    ...request.validity,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions,
  });
  return finish(certificate, keys);
}

export interface GenerateOptions {
  outDir: string;
  /** Names and addresses clients use to reach the agent; DEFAULT_HOSTS when empty. */
  hosts?: readonly string[];
  /** Replace existing files instead of refusing. */
  force?: boolean;
  validityDays?: number;
  /**
   * Group id that may read the set (the service's group): the folders and files get this
   * group, and the private keys mode 0640 instead of 0600.
   */
  groupId?: number;
}

function checkHost(host: string): void {
  if (net.isIP(host) !== 0) return;
  if (!/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$/.test(host)) {
    throw new Error(`${JSON.stringify(host)} is neither an IP address nor a DNS name`);
  }
}

/** Writes `contents` to `file`; without `force`, an existing file is an error and left alone. */
function writeFile(file: string, contents: string, mode: number, force: boolean): void {
  if (!force) {
    fs.writeFileSync(file, contents, { mode, flag: 'wx' });
    return;
  }
  const temporary = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(temporary, contents, { mode, flag: 'w' });
  fs.chmodSync(temporary, mode);
  fs.renameSync(temporary, file);
}

/** Returns the paths written. */
export async function generateCertificates(options: GenerateOptions): Promise<Record<keyof typeof CERTIFICATE_FILES, string>> {
  const hosts = options.hosts !== undefined && options.hosts.length > 0 ? [...options.hosts] : DEFAULT_HOSTS;
  hosts.forEach(checkHost);
  const force = options.force ?? false;
  const files = Object.fromEntries(Object.entries(CERTIFICATE_FILES).map(([key, name]) => [key, path.join(options.outDir, name)])) as
    Record<keyof typeof CERTIFICATE_FILES, string>;
  const existing = Object.values(files).filter((file) => fs.existsSync(file));
  if (existing.length > 0 && !force) throw new Error(`refusing to overwrite ${existing.join(', ')} (use --force to replace them)`);

  const validity = validityFor(options.validityDays ?? DEFAULT_VALIDITY_DAYS);
  const ca = await createCertificateAuthority('coriolis-snapshot-agent CA', validity);
  const server = await issueCertificate(ca, { commonName: hosts[0], usage: 'server', hosts, validity });
  const client = await issueCertificate(ca, { commonName: 'coriolis-snapshot-agent client', usage: 'client', validity });

  const created = fs.mkdirSync(options.outDir, { recursive: true, mode: 0o750 });
  const { groupId } = options;
  const keyMode = groupId === undefined ? 0o600 : 0o640;
  writeFile(files.caCert, ca.certificatePem, 0o644, force);
  writeFile(files.serverCert, server.certificatePem, 0o644, force);
  writeFile(files.serverKey, server.keyPem, keyMode, force);
  writeFile(files.clientCert, client.certificatePem, 0o644, force);
  writeFile(files.clientKey, client.keyPem, keyMode, force);
  if (groupId !== undefined) {
    // mkdir -p returns the first folder it made: the service must traverse it and those below.
    const folders = [options.outDir];
    if (created !== undefined) {
      for (let dir = path.dirname(options.outDir); dir.startsWith(created); dir = path.dirname(dir)) folders.push(dir);
    }
    for (const target of [...folders, ...Object.values(files)]) fs.chownSync(target, -1, groupId);
  }
  return files;
}

export const GEN_CERTS_USAGE = `usage: coriolis-snapshot-agent gen-certs --out DIR [--hosts h1,h2,...] [--group GROUP] [--force]
  --out DIR        where to write ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem
                   and client-key.pem (created, mode 0750)
  --hosts LIST     names and IP addresses clients use to reach the agent, for the server
                   certificate (default ${DEFAULT_HOSTS.join(',')})
  --group GROUP    the service's group (e.g. coriolis): it gets read access to the folder and
                   the keys (0640); without it the keys are 0600, readable by their owner only
  --force          replace an existing set
Exit status: 0 written, 1 failed (e.g. the files exist), 2 bad usage.`;

export interface CommandOutput {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

/** The gen-certs subcommand; returns the exit status (2 for a usage error). */
export async function genCertsCommand(args: string[], output: CommandOutput = process): Promise<number> {
  let values: { out?: string; hosts?: string; group?: string; force?: boolean };
  let groupId: number | undefined;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: { out: { type: 'string' }, hosts: { type: 'string' }, group: { type: 'string' }, force: { type: 'boolean' } },
    }));
    if (values.out === undefined || values.out === '') throw new Error('--out is required');
    if (values.group !== undefined) groupId = lookupGroupId(values.group);
  } catch (err) {
    output.stderr.write(`gen-certs: ${(err as Error).message}\n${GEN_CERTS_USAGE}\n`);
    return 2;
  }
  const hosts = values.hosts?.split(',').map((host) => host.trim()).filter((host) => host !== '');
  try {
    const files = await generateCertificates({ outDir: path.resolve(values.out), hosts, force: values.force ?? false, groupId });
    output.stdout.write(`${Object.values(files).join('\n')}\n`);
    return 0;
  } catch (err) {
    output.stderr.write(`gen-certs: ${(err as Error).message}\n`);
    return 1;
  }
}

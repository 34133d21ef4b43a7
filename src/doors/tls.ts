// What both doors that serve disk data (the REST API and NBD) share about TLS: the PEM
// material, one set of server options (TLS 1.2 or newer, a client certificate from the CA
// required, the same cipher order), and the one rule for which addresses are loopback.
import net from 'node:net';
import tls from 'node:tls';

export interface TlsMaterial {
  /** PEM server certificate, optionally followed by its chain. */
  certificate: string;
  key: string;
  /** PEM bundle of the CAs that sign client certificates. */
  caCertificate: string;
}

// Node's default suites with AES-128-GCM first, chosen by the server: as safe as AES-256-GCM,
// and about a quarter cheaper per byte for this server and for the client decrypting a disk.
const AES_128_FIRST = 'TLS_AES_128_GCM_SHA256';
export const SERVER_CIPHERS = [AES_128_FIRST, ...tls.DEFAULT_CIPHERS.split(':').filter((suite) => suite !== AES_128_FIRST)].join(':');

/** Server options of every TLS listener: the material, TLS 1.2+, the client certificate required. */
export function serverTlsOptions(material: TlsMaterial): tls.TlsOptions {
  return {
    cert: material.certificate,
    key: material.key,
    ca: material.caCertificate,
    minVersion: 'TLSv1.2',
    ciphers: SERVER_CIPHERS,
    honorCipherOrder: true,
    requestCert: true,
    rejectUnauthorized: true,
  };
}

/** Throws now, at start, on PEM material that would fail every handshake later. */
export function checkTlsMaterial(material: TlsMaterial): void {
  tls.createSecureContext(serverTlsOptions(material));
}

/** 127.0.0.0/8 (also IPv4-mapped) and ::1 in any spelling: the one rule for "plaintext is only for loopback". */
export function isLoopbackAddress(address: string): boolean {
  const plain = address.toLowerCase().startsWith('::ffff:') ? address.slice('::ffff:'.length) : address;
  if (net.isIPv4(plain)) return plain.split('.')[0] === '127';
  // The URL parser writes every IPv6 address in its shortest form.
  return net.isIPv6(address) && new URL(`http://[${address}]`).hostname === '[::1]';
}

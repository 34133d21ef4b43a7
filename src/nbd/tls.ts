// TLS for NBD: the in-session upgrade after NBD_OPT_STARTTLS (TLS 1.2 or newer, a client
// certificate signed by the configured CA required), and the rule that plaintext is only
// for loopback.
import net from 'node:net';
import tls from 'node:tls';

export interface NbdTlsMaterial {
  /** PEM server certificate, optionally followed by its chain. */
  certificate: string;
  key: string;
  /** PEM bundle of the CAs that sign client certificates. */
  caCertificate: string;
}

/** Throws now, at start, on PEM material that would fail every handshake later. */
export function checkTlsMaterial(material: NbdTlsMaterial): void {
  tls.createSecureContext({ cert: material.certificate, key: material.key, ca: material.caCertificate, minVersion: 'TLSv1.2' });
}

/**
 * Runs the server side of the TLS handshake over `socket` and resolves with the encrypted
 * socket once the client's certificate has been verified against the CA. Rejects (and destroys
 * the socket) when the handshake fails or the client presents no valid certificate.
 *
 * The socket is handed to a tls.Server that never listens: only its connection handling checks
 * the client certificate (a bare TLSSocket completes the handshake whatever the client sent).
 */
export function upgradeToTls(socket: net.Socket, material: NbdTlsMaterial): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const server = tls.createServer({
      cert: material.certificate,
      key: material.key,
      ca: material.caCertificate,
      minVersion: 'TLSv1.2',
      requestCert: true,
      rejectUnauthorized: true,
    });
    server.once('secureConnection', (secure: tls.TLSSocket) => {
      server.removeAllListeners('tlsClientError');
      resolve(secure);
    });
    server.once('tlsClientError', (err: Error, secure: tls.TLSSocket) => {
      server.removeAllListeners('secureConnection');
      // A refused certificate shows as a hang-up; the reason is on the socket.
      const certificate = secure.authorizationError ? ` (client certificate: ${String(secure.authorizationError)})` : '';
      secure.destroy();
      socket.destroy();
      reject(new Error(`TLS handshake failed: ${err.message}${certificate}`, { cause: err }));
    });
    server.emit('connection', socket);
  });
}

export function isLoopbackAddress(address: string): boolean {
  const plain = address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : address;
  if (net.isIPv4(plain)) return plain.split('.')[0] === '127';
  return net.isIPv6(address) && (address === '::1' || address === '0:0:0:0:0:0:0:1');
}
